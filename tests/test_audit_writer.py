"""The audit writer on both databases: shared commits, checkpoints by count, time and shutdown, crash safety."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.audit.committer import COPY_ABOVE, CommitterError, PostgresCommitter, SqliteCommitter
from gateway.audit.rows import AUDIT_TABLE, load_checkpoints
from gateway.audit.sealing import ENTRY_FIELDS, Entry, RowSealer
from gateway.audit.search import open_payload
from gateway.audit.witness import read_witness, witness_path
from gateway.audit.writer import AuditUnavailable, AuditWriter
from security.audit_chain import GENESIS_HASH
from tests.helpers.audit import CHAIN, Store, audit_store, event, open_writer, rows, verify
from tests.helpers.clock import ManualClock
from tests.helpers.services import create_test_database, drop_database


def _sqlite_committer(writer: AuditWriter) -> tuple[SqliteCommitter, int]:
    committer = writer._committer
    assert isinstance(committer, SqliteCommitter) and committer.pid is not None
    return committer, committer.pid


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with audit_store(request.param, tmp_path) as opened:
        yield opened


@pytest.mark.parametrize("suite", ["standard", "sm"])
async def test_concurrent_appends_share_commits_and_every_payload_opens(store: Store, suite: str) -> None:
    writer = await open_writer(store, suite, every=1000)
    try:
        committed = await asyncio.gather(*[writer.append(event(i)) for i in range(300)])
        batches = writer.batches
    finally:
        await writer.close()
    assert sorted(row["height"] for row in committed) == list(range(1, 301))
    assert batches < 300 / 4, f"300 concurrent appends took {batches} commits: group commit is not working"
    stored = await rows(store)
    assert len(stored) == 300 and {row["suite"] for row in stored} == {suite}
    for row in stored[:20]:
        opened = await open_payload(writer.keyring, row, "response")
        assert opened is not None and opened.startswith(b'{"data"')
    report = (await verify(store))[CHAIN]
    assert report.ok and report.sealed_height == 300, "the graceful close signed the head"


async def test_checkpoints_follow_count_time_and_shutdown(store: Store) -> None:
    clock = ManualClock(datetime.now(UTC))  # time passes only when the test says, however slow the host
    writer = await open_writer(store, every=5, seconds=0.3, clock=clock)
    try:
        for index in range(7):
            await writer.append(event(index))
        assert [cp.height for cp in await load_checkpoints(store.engine, CHAIN)] == [5]
        clock.advance(seconds=0.3)
        deadline = time.monotonic() + 60  # a bound on hanging: the writer looks every 0.15 s
        while writer.sealed_height < 7:
            assert time.monotonic() < deadline, "no checkpoint after the time limit"
            await asyncio.sleep(0.05)
        await writer.append(event(8))
    finally:
        await writer.close()
    heights = [cp.height for cp in await load_checkpoints(store.engine, CHAIN)]
    assert heights == [5, 7, 8], "count, then time, then shutdown"
    witness = read_witness(witness_path(store.settings, CHAIN))
    assert [cp.height for cp in witness] == heights, "each checkpoint is also kept outside the database"


async def test_a_checkpoint_by_count_is_committed_without_waiting_for_another_record(store: Store) -> None:
    """The committer seals and chains, so a checkpoint by count is signed once its head is committed; with no batch
    behind it to carry it, it goes alone, signing the head it was counted at."""
    writer = await open_writer(store, every=4, seconds=3600)
    try:
        committed = [await writer.append(event(index)) for index in range(4)]
        deadline = time.monotonic() + 30
        while writer.sealed_height < 4:
            assert time.monotonic() < deadline, "the checkpoint by count never went in"
            await asyncio.sleep(0.01)
        checkpoints = await load_checkpoints(store.engine, CHAIN)
        assert [(cp.height, cp.head_hash) for cp in checkpoints] == [(4, committed[-1]["record_hash"])]
        assert writer.head == committed[-1]["record_hash"]
    finally:
        await writer.close()
    assert (await verify(store))[CHAIN].ok


async def test_a_checkpoint_asked_for_while_one_by_count_is_on_its_way_does_not_repeat_its_height(
    store: Store,
) -> None:
    """A checkpoint by count goes to the committer after its head is committed; one asked for meanwhile (the timer,
    an officer, shutdown) must not sign the same height again: the second would fail its insert, and with it the
    batch that carried the first. Each round asks at once after the count is reached, so that some find the
    checkpoint by count not yet sent, some in the pipe, some committed."""
    writer = await open_writer(store, every=2, seconds=3600)
    try:
        for round_ in range(20):
            await writer.append(event(2 * round_))
            await writer.append(event(2 * round_ + 1))
            await writer.checkpoint()
        assert (await writer.append(event(99)))["height"] == 41
    finally:
        await writer.close()
    heights = [cp.height for cp in await load_checkpoints(store.engine, CHAIN)]
    assert heights == sorted(set(heights)) and heights[-1] == 41, heights
    witness = read_witness(witness_path(store.settings, CHAIN))
    assert [cp.height for cp in witness] == heights, "the witness file holds what the database holds"
    assert (await verify(store))[CHAIN].ok


async def test_a_restart_continues_the_chain_and_signs_an_unsigned_tail(store: Store) -> None:
    writer = await open_writer(store, every=1000)
    for index in range(3):
        await writer.append(event(index))
    writer._signer = None  # as if the process died before its shutdown checkpoint
    await writer.close()
    assert await load_checkpoints(store.engine, CHAIN) == []
    again = await open_writer(store, every=1000)
    try:
        assert (again.height, again.sealed_height) == (3, 3), "the unsigned tail is signed before new appends"
        row = await again.append(event(3))
        assert row["height"] == 4 and row["prev_hash"] == writer.head
    finally:
        await again.close()
    assert (await verify(store))[CHAIN].ok


async def test_values_too_long_or_with_nul_are_recorded_not_failed(store: Store) -> None:
    writer = await open_writer(store)
    try:
        strange = event(0, path="/v1/" + "x" * 5000, key_id="k\x00" * 100, service="s" * 500)
        fine = event(1)
        results = await asyncio.gather(writer.append(strange), writer.append(fine))
    finally:
        await writer.close()
    assert [row["height"] for row in results] == [1, 2], "one odd request does not sink the batch it shares"
    stored = await rows(store)
    assert len(stored[0]["path"]) == 512 and "\x00" not in stored[0]["key_id"]
    assert (await verify(store))[CHAIN].ok


async def test_store_down_fails_every_waiter_and_the_writer_recovers(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    writer = await open_writer(store)
    try:
        await writer.append(event(0))
        async with store.engine.begin() as connection:
            await connection.exec_driver_sql("ALTER TABLE audit_records RENAME TO audit_records_away")
        try:
            outcomes = await asyncio.gather(*[writer.append(event(i)) for i in range(5)], return_exceptions=True)
        finally:
            async with store.engine.begin() as connection:
                await connection.exec_driver_sql("ALTER TABLE audit_records_away RENAME TO audit_records")
        assert all(isinstance(outcome, AuditUnavailable) for outcome in outcomes)
        assert writer.last_error is not None
        # The log names what the database said, not only the committer's class.
        failures = [r.getMessage() for r in caplog.records if "audit commit of" in r.getMessage()]
        real_error = "no such table: audit_records" if store.backend == "sqlite" else 'relation "audit_records"'
        assert len(failures) == 1 and real_error in failures[0], "one line for the cause, not one a commit"
        assert (await writer.append(event(9)))["height"] == 2
        assert writer.last_error is None
        back = [r.getMessage() for r in caplog.records if "audit commits succeed again" in r.getMessage()]
        assert len(back) == 1 and "records (each answered 503)" in back[0], back
    finally:
        await writer.close()
    assert (await verify(store))[CHAIN].ok


async def test_append_many_gives_the_rows_of_single_appends_and_fails_them_together(store: Store) -> None:
    """A batch chunk's records in one call: each committed in order in the chain, payloads sealed as for `append`;
    with the store down the call fails and nothing of it stands, and the chain goes on after."""
    writer = await open_writer(store, every=1000)
    try:
        first = await writer.append(event(0))
        events = [event(i) for i in range(1, 201)]
        committed = await writer.append_many(events)
        assert [row["height"] for row in committed] == list(range(2, 202))
        assert [row["request_id"] for row in committed] == [item.request_id for item in events]
        async with store.engine.begin() as connection:
            await connection.exec_driver_sql("ALTER TABLE audit_records RENAME TO audit_records_away")
        try:
            with pytest.raises(AuditUnavailable):
                await writer.append_many([event(i) for i in range(300, 310)])
        finally:
            async with store.engine.begin() as connection:
                await connection.exec_driver_sql("ALTER TABLE audit_records_away RENAME TO audit_records")
        assert (await writer.append(event(9)))["height"] == 202
    finally:
        await writer.close()
    stored = await rows(store)
    assert len(stored) == 202 and stored[0]["request_id"] == first["request_id"]
    opened = await open_payload(writer.keyring, stored[100], "response")
    assert opened is not None and opened.startswith(b'{"data"')
    assert (await verify(store))[CHAIN].ok


async def test_a_sqlite_committer_dying_mid_batch_fails_it_closed_and_is_started_again(tmp_path: Path) -> None:
    async with audit_store("sqlite", tmp_path) as store:
        writer = await open_writer(store)
        try:
            await writer.append(event(0))
            committer, first_pid = _sqlite_committer(writer)
            os.kill(first_pid, signal.SIGSTOP)  # stopped, so the batch below is surely in its hands when it dies
            try:
                pending = asyncio.create_task(writer.append(event(1)))
                await asyncio.sleep(0.2)
                assert not pending.done()
            finally:
                os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(AuditUnavailable):
                await pending
            assert writer.last_error == "CommitterError"
            assert (await writer.append(event(2)))["height"] == 2, "the lost batch left no gap in the chain"
            assert committer.pid not in (None, first_pid)
        finally:
            await writer.close()
        assert committer.pid is None, "closing the writer stops its committer"
        assert (await verify(store))[CHAIN].ok


async def test_the_sqlite_committer_outlives_signals_meant_for_the_gateway(tmp_path: Path) -> None:
    async with audit_store("sqlite", tmp_path) as store:
        writer = await open_writer(store)
        try:
            committer, pid = _sqlite_committer(writer)
            for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a stop sent to the whole process group
                os.kill(pid, signum)
            await asyncio.sleep(0.2)
            assert (await writer.append(event(0)))["height"] == 1
            assert committer.pid == pid, "the same process: the gateway's shutdown still needs it for the last batch"
        finally:
            await writer.close()
        assert committer.pid is None


async def test_a_lost_postgres_connection_is_replaced_and_the_chain_goes_on(tmp_path: Path) -> None:
    async with audit_store("postgres", tmp_path) as store:
        writer = await open_writer(store)
        try:
            await writer.append(event(0))
            committer = writer._committer
            assert isinstance(committer, PostgresCommitter) and committer.backend_pid is not None
            first_backend = committer.backend_pid
            async with store.engine.connect() as connection:
                # With a timeout (PostgreSQL 14+) it returns once the backend is gone, not when it was signalled.
                await connection.exec_driver_sql(f"SELECT pg_terminate_backend({int(first_backend)}, 5000)")
            # asyncpg may already know the connection is closed (then it is replaced before the batch) or learn it
            # from the batch (which then fails closed): either way no record is lost or doubled.
            try:
                committed = [await writer.append(event(1))]
            except AuditUnavailable:
                committed = []
            assert (await writer.append(event(2)))["height"] == 2 + len(committed)
            assert committer.backend_pid not in (None, first_backend)
        finally:
            await writer.close()
        assert committer.backend_pid is None, "closing the writer closes its connection"
        assert (await verify(store))[CHAIN].ok


@pytest.mark.parametrize("size", [2, COPY_ABOVE + 2], ids=["insert", "copy"])
async def test_a_postgres_batch_goes_in_whole_or_not_at_all(size: int) -> None:
    """Small batches go in by a prepared INSERT a row, bigger ones by COPY: either way one row refused refuses them
    all, and the next batch, given the head, goes in whole."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = await create_test_database()
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    committer = PostgresCommitter(
        dsn, "t", ["x", "y"], "", RowSealer("standard", "chain", {}, ("record_id", "request_id"))
    )
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(drop_database, url)
        setup = await asyncpg.connect(dsn)
        cleanup.push_async_callback(setup.close)
        cleanup.push_async_callback(committer.close)
        await setup.execute("CREATE TABLE t (x TEXT PRIMARY KEY, y TEXT)")
        await committer.open()
        repeated = [_entry(f"a{i}") for i in range(size - 1)] + [_entry("a0")]
        with pytest.raises(asyncpg.UniqueViolationError):
            await committer.commit(repeated, KEYS, base=(0, GENESIS_HASH), checkpoint=None)
        assert await setup.fetchval("SELECT count(*) FROM t") == 0, "no row of a refused batch stays"
        height, head, hashes = await committer.commit(
            [_entry(f"b{i}") for i in range(size)], KEYS, base=(0, GENESIS_HASH), checkpoint=None
        )
        assert (height, head, len(hashes)) == (0, GENESIS_HASH, size)
        assert [x for (x,) in await setup.fetch("SELECT x FROM t ORDER BY x")] == sorted(f"b{i}" for i in range(size))


CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from gateway.storage import db
    from gateway.settings import load_settings
    from tests.helpers.audit import Store, event, open_writer

    async def main():
        settings = load_settings(data_dir=Path(sys.argv[1]), database_url=sys.argv[2] or None)
        store = Store(settings, db.create_engine(settings), "postgres" if sys.argv[2] else "sqlite")
        writer = await open_writer(store, every=50)
        print("ready", flush=True)
        index = 0
        while True:
            await asyncio.gather(*[writer.append(event(index + n)) for n in range(64)])
            index += 64

    asyncio.run(main())
    """
)


async def test_a_writer_killed_mid_write_leaves_a_chain_that_verifies(store: Store, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_WRITER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(store.settings.data_dir), store.settings.database_url or ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 20
        while True:  # kill it while it writes, once a few batches are in
            async with store.engine.connect() as connection:
                count = len((await connection.execute(select(AUDIT_TABLE.c.height))).all())
            if count >= 300 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    report = (await verify(store))[CHAIN]
    assert report.ok, str(report.fault)
    assert report.records >= 300, "whatever was committed before the kill verifies: no torn record"
    writer = await open_writer(store, every=50)
    try:
        assert writer.sealed_height == report.records, "the restart signed what the crash left unsigned"
        await writer.append(event(0))
    finally:
        await writer.close()
    assert (await verify(store))[CHAIN].ok


async def test_two_nodes_write_their_own_chains_side_by_side(tmp_path: Path) -> None:
    import base64

    from gateway.audit.signer import trusted_keys
    from gateway.settings import load_settings
    from gateway.storage import db

    master = base64.b64encode(os.urandom(32)).decode()
    async with audit_store("postgres", tmp_path / "node-1", master_key=master) as first:
        second_settings = load_settings(
            data_dir=tmp_path / "node-2", database_url=first.settings.database_url, master_key=master
        )
        second = Store(second_settings, db.create_engine(second_settings), "postgres")
        try:
            one = await open_writer(first, chain_id="node-1", every=10)
            two = await open_writer(second, chain_id="node-2", every=10)
            try:
                await asyncio.gather(*[w.append(event(i)) for i in range(40) for w in (one, two)])
                assert one.subject_hash("91110000600037341L") == two.subject_hash("91110000600037341L")
            finally:
                await one.close()
                await two.close()
            node_two_key = tmp_path / "node-2.pub.pem"
            node_two_key.write_bytes((second_settings.keys_dir / "audit-signing.pub.pem").read_bytes())
            both = await verify(first, trusted=trusted_keys(first.settings, [node_two_key]))
            assert {chain: report.records for chain, report in both.items()} == {"node-1": 40, "node-2": 40}
            assert all(report.ok for report in both.values())
            only_own = await verify(first)
            assert only_own["node-1"].ok
            fault = only_own["node-2"].fault
            assert fault is not None and fault.kind == "rehashed" and "not a trusted key" in fault.detail
        finally:
            await second.engine.dispose()


async def test_the_sqlite_committer_checkpoints_the_log_beside_its_commits(tmp_path: Path) -> None:
    """Its own connection never checkpoints (that ran inside a COMMIT, and one record waited for thousands to be
    copied): a thread of the committer copies the log into the database file, so the file alone holds the rows."""
    async with audit_store("sqlite", tmp_path) as store:
        database = Path(str(store.engine.url.database))
        writer = await open_writer(store, every=1000)
        try:
            await asyncio.gather(*[writer.append(event(i)) for i in range(50)])
            counted = 0
            deadline = time.monotonic() + 10
            while counted < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                # The database file without its log: what a checkpoint has copied, and nothing else.
                alone = tmp_path / f"alone-{time.monotonic_ns()}.db"
                alone.write_bytes(database.read_bytes())
                with sqlite3.connect(alone) as copy:
                    counted = copy.execute(f"SELECT count(*) FROM {AUDIT_TABLE.name}").fetchone()[0]
            assert counted == 50, "50 committed records, far below SQLite's 1,000-page automatic checkpoint"
        finally:
            await writer.close()
        assert (await verify(store))[CHAIN].ok


def test_the_wal_checkpointer_stops_at_once_however_long_its_interval(tmp_path: Path) -> None:
    """A stop ends the wait between two checkpoints: with a sleep there, every close of the gateway waited for it."""
    from gateway.audit.committer import WalCheckpointer

    database = tmp_path / "wal.db"
    with sqlite3.connect(database) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x)")
        setup.execute("INSERT INTO t VALUES (1)")
    checkpointer = WalCheckpointer(str(database), ["PRAGMA journal_mode=WAL"], interval=60)
    checkpointer.start()
    checkpointer.nudge()  # one checkpoint, then the 60 s wait
    time.sleep(0.2)
    started = time.monotonic()
    checkpointer.stop()
    assert not checkpointer.is_alive()
    assert time.monotonic() - started < 10, "the stop waited out the interval"


def _locked_database(tmp_path: Path) -> Path:
    database = tmp_path / "busy.db"
    with sqlite3.connect(database) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x)")
    return database


def test_a_commit_takes_the_write_lock_as_soon_as_another_writer_lets_go(tmp_path: Path) -> None:
    """SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ms between tries: a lock held 60 ms was taken at
    78. The committer asks every BUSY_POLL seconds instead, and the connection keeps its busy timeout afterwards."""
    import threading

    from gateway.audit.committer import _begin

    database = _locked_database(tmp_path)
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    committer = sqlite3.connect(database, isolation_level=None, timeout=30)
    released: list[float] = []

    def release() -> None:
        time.sleep(0.06)
        # Stamped before the COMMIT: the committer may take the lock before this thread runs again after it.
        released.append(time.monotonic())
        holder.execute("COMMIT")

    thread = threading.Thread(target=release)
    thread.start()
    _begin(committer)
    taken = time.monotonic()
    thread.join()
    assert committer.in_transaction
    assert taken >= released[0], "BEGIN IMMEDIATE returned while the other writer held the lock"
    assert taken - released[0] < 0.012, f"the lock was taken {(taken - released[0]) * 1000:.1f} ms after its release"
    committer.execute("INSERT INTO t VALUES (1)")
    committer.execute("COMMIT")
    assert committer.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    holder.close()
    committer.close()


def test_a_commit_gives_up_on_a_lock_held_past_its_wait(tmp_path: Path) -> None:
    """It waits as long as the connection's busy timeout (50 ms here), then fails the batch."""
    from gateway.audit.committer import _begin

    database = _locked_database(tmp_path)
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    connection = sqlite3.connect(database, isolation_level=None, timeout=0.05)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _begin(connection)
    assert 0.05 <= time.monotonic() - started < 5
    assert not connection.in_transaction
    holder.execute("ROLLBACK")
    _begin(connection)  # free again: taken at once
    assert connection.in_transaction
    holder.close()
    connection.close()


def _entry(record_id: str) -> Entry:
    """A record of the smallest kind, for a committer whose table holds record and request ids only."""
    values: dict[str, object] = dict.fromkeys(ENTRY_FIELDS)
    values.update(
        record_id=record_id,
        ts_ms=0,
        event="test",
        request_id=f"request-{record_id}",
        decision="allowed",
        status_code=200,
        duration_us=0,
        request_body=b"",
        response_body=b"",
        store_response=True,
    )
    return tuple(values[name] for name in ENTRY_FIELDS)


KEYS = ("data-key", bytes(32), bytes(32))


def _small_committer(database: Path) -> SqliteCommitter:
    with sqlite3.connect(database) as setup:
        setup.execute("CREATE TABLE t (x TEXT PRIMARY KEY, y TEXT)")
    return SqliteCommitter(
        str(database),
        ["PRAGMA journal_mode=WAL"],
        "INSERT INTO t VALUES (?, ?)",
        "",
        RowSealer("standard", "chain", {}, ("record_id", "request_id")),
    )


async def test_a_batch_behind_one_that_failed_in_the_committer_is_refused(tmp_path: Path) -> None:
    """Two batches in the pipe at once: the second goes on from the first, so when the first fails the child
    refuses the second, and takes the next batch only with the head to chain on."""
    database = tmp_path / "pipe.db"
    committer = _small_committer(database)
    assert committer.depth == 2
    await committer.open()
    try:
        height, head, hashes = await committer.commit([_entry("a")], KEYS, base=(0, GENESIS_HASH), checkpoint=None)
        assert (height, head, len(hashes)) == (0, GENESIS_HASH, 1)
        # The second batch repeats a key (the database refuses it); the third goes on from it.
        outcomes = await asyncio.gather(
            committer.commit([_entry("b"), _entry("a")], KEYS, base=None, checkpoint=None),
            committer.commit([_entry("c")], KEYS, base=None, checkpoint=None),
            return_exceptions=True,
        )
        assert [type(outcome).__name__ for outcome in outcomes] == ["CommitterError", "CommitterError"]
        assert "UNIQUE constraint failed" in str(outcomes[0])
        assert "OutOfOrder" in str(outcomes[1]) and "UNIQUE" not in str(outcomes[1])
        pid = committer.pid
        with pytest.raises(CommitterError, match="OutOfOrder"):
            await committer.commit([_entry("d")], KEYS, base=None, checkpoint=None)
        after = await committer.commit([_entry("d")], KEYS, base=(1, hashes[0]), checkpoint=None)
        assert after[:2] == (1, hashes[0])
        assert committer.pid == pid, "a refused batch leaves the process serving"
    finally:
        await committer.close()
    with sqlite3.connect(database) as check:
        assert [x for (x,) in check.execute("SELECT x FROM t ORDER BY x")] == ["a", "d"]


async def test_a_committer_that_died_idle_is_replaced_and_the_chain_goes_on(tmp_path: Path) -> None:
    """Nothing was lost with a process that had answered every batch: its successor goes on from the last answer,
    and no batch is refused for it."""
    committer = _small_committer(tmp_path / "idle.db")
    await committer.open()
    try:
        _, _, first = await committer.commit([_entry("a")], KEYS, base=(0, GENESIS_HASH), checkpoint=None)
        pid = committer.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while committer.pid == pid:
            assert time.monotonic() < deadline, "the killed committer was not seen gone"
            await asyncio.sleep(0.02)
        height, head, _ = await committer.commit([_entry("b")], KEYS, base=None, checkpoint=None)
        assert (height, head) == (1, first[0])
        assert committer.pid not in (None, pid)
    finally:
        await committer.close()


async def test_two_batches_in_the_pipe_when_the_committer_dies_both_fail_and_the_chain_has_no_gap(
    tmp_path: Path,
) -> None:
    async with audit_store("sqlite", tmp_path) as store:
        events = [event(i) for i in range(5)]
        writer = await open_writer(store)
        try:
            await writer.append(events[0])
            committer, first_pid = _sqlite_committer(writer)
            os.kill(first_pid, signal.SIGSTOP)
            try:
                first = asyncio.create_task(writer.append(events[1]))
                await asyncio.sleep(0.1)
                second = asyncio.create_task(writer.append(events[2]))
                await asyncio.sleep(0.1)
                third = asyncio.create_task(writer.append(events[3]))
                await asyncio.sleep(0.2)
                assert len(writer._flights) == 2, "the second batch was sent while the first was committing"
                assert writer._pending, "the third waits: two batches at most in the pipe"
            finally:
                os.kill(first_pid, signal.SIGKILL)
            for appended in (first, second):
                with pytest.raises(AuditUnavailable):
                    await appended
            assert (await third)["height"] == 2, "the third was chained on the head read back, not on the lost ones"
            assert (await writer.append(events[4]))["height"] == 3
            assert committer.pid not in (None, first_pid)
        finally:
            await writer.close()
        stored = await rows(store)
        assert [row["request_id"] for row in stored] == [events[i].request_id for i in (0, 3, 4)]
        assert (await verify(store))[CHAIN].ok


async def test_only_small_batches_share_the_pipe(tmp_path: Path) -> None:
    """A batch comparison's chunk is committed alone, as before the pipe held two: the record behind it waits."""
    from gateway.audit.writer import PIPELINE_BEHIND

    async with audit_store("sqlite", tmp_path) as store:
        writer = await open_writer(store)
        try:
            _, pid = _sqlite_committer(writer)
            os.kill(pid, signal.SIGSTOP)
            try:
                chunk = asyncio.create_task(writer.append_many([event(i) for i in range(PIPELINE_BEHIND + 1)]))
                await asyncio.sleep(0.1)
                single = asyncio.create_task(writer.append(event(PIPELINE_BEHIND + 1)))
                await asyncio.sleep(0.2)
                assert len(writer._flights) == 1 and len(writer._pending) == 1
            finally:
                os.kill(pid, signal.SIGCONT)
            assert len(await chunk) == PIPELINE_BEHIND + 1
            assert (await single)["height"] == PIPELINE_BEHIND + 2
        finally:
            await writer.close()
        assert (await verify(store))[CHAIN].ok


async def test_a_batch_behind_one_cut_off_mid_answer_fails_without_reading(tmp_path: Path) -> None:
    """Cancelled while waiting for its answer, a commit leaves that answer unread: the batch behind it must not read
    it as its own, so it fails as well."""
    committer = _small_committer(tmp_path / "cut.db")
    await committer.open()
    pid = committer.pid
    assert pid is not None
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            first = asyncio.create_task(committer.commit([_entry("a")], KEYS, base=(0, GENESIS_HASH), checkpoint=None))
            second = asyncio.create_task(committer.commit([_entry("b")], KEYS, base=None, checkpoint=None))
            await asyncio.sleep(0.2)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        with pytest.raises(CommitterError, match="cut off with the batch ahead"):
            await second
        assert committer.pid is None, "the process that owed an answer is gone"
        # A new process for the next batch, which is refused without the head to chain on: the answer was lost.
        with pytest.raises(CommitterError, match="OutOfOrder"):
            await committer.commit([_entry("c")], KEYS, base=None, checkpoint=None)
        await committer.commit([_entry("c")], KEYS, base=(0, GENESIS_HASH), checkpoint=None)
    finally:
        await committer.close()
