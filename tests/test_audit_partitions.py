"""The audit log in monthly partitions on the real PostgreSQL: the migration of existing rows, a write at and past a
month boundary, archiving that drops whole months only after their files verify, and search across months."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from gateway.audit.archive import ArchiveError, archive_log
from gateway.audit.partitions import MONTHS_AHEAD, list_partitions, month_of, month_partition, shift
from gateway.audit.search import AuditQuery, search_records, subject_hashes
from gateway.audit.signer import trusted_keys
from gateway.audit.writer import AuditWriter
from gateway.settings import load_settings
from gateway.storage import db
from security.keyring import now_ms
from security.keys import generate_ed25519
from tests.helpers.audit import CHAIN, Store, audit_store, event, open_writer, rows, verify
from tests.helpers.services import DATABASE_URL, admin_connection, drop_database, with_database

DAY_MS = 86_400_000
BEFORE = "0015"  # the revision before the partitioning one


class Clock:
    """The writer's clock (gateway.clock.Clock), set by the test: every record and checkpoint takes the time it
    shows, `stamp` in Unix milliseconds."""

    def __init__(self, stamp: int) -> None:
        self.stamp = stamp

    def ms(self) -> int:
        return self.stamp

    def time(self) -> float:
        return self.stamp / 1000

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.stamp / 1000, UTC)


def months_back(months: int, day: int = 10) -> int:
    """A time `months` whole months before this one, on the given day of that month (Beijing)."""
    return month_partition(*shift(*month_of(now_ms()), -months)).low_ms + day * DAY_MS


async def partitions_of(store: Store) -> dict[str, int]:
    """Each partition of audit_records with its number of rows."""
    async with store.engine.connect() as connection:
        names = [p.name for p in await list_partitions(connection)]
        counts = {}
        for name in names:
            counts[name] = (await connection.execute(text(f"SELECT count(*) FROM {name}"))).scalar()
    return counts


async def write_at(writer: AuditWriter, clock: Clock, stamps: list[int]) -> None:
    for index, stamp in enumerate(stamps):
        clock.stamp = stamp
        await writer.append(event(index))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with audit_store("postgres", tmp_path) as opened:
        yield opened


async def test_the_migration_moves_existing_rows_into_their_months(tmp_path: Path) -> None:
    name = f"msjx_t_{secrets.token_hex(4)}"
    admin = await admin_connection()
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = with_database(DATABASE_URL, name)
    settings = load_settings(data_dir=tmp_path, database_url=url)
    try:
        await db.upgrade_async(settings, BEFORE)  # the unpartitioned table, as every node has it today
        engine = db.create_engine(settings)
        store = Store(settings, engine, "postgres")
        clock = Clock(months_back(14))
        try:
            writer = await open_writer(store, clock=clock)
            await write_at(writer, clock, [months_back(14), months_back(14) + 1, months_back(2), months_back(0, 1)])
            await writer.close()
            async with engine.connect() as connection:
                kind = text("SELECT relkind::text FROM pg_class WHERE relname = 'audit_records'")
                assert (await connection.execute(kind)).scalar() == "r"
            before = await rows(store)
        finally:
            await engine.dispose()

        await db.upgrade_async(settings)
        engine = db.create_engine(settings)
        store = Store(settings, engine, "postgres")
        try:
            counts = await partitions_of(store)
            assert counts[month_partition(*month_of(months_back(14))).name] == 2
            assert counts[month_partition(*month_of(months_back(2))).name] == 1
            assert counts[month_partition(*month_of(months_back(0, 1))).name] == 1
            last = month_partition(*shift(*month_of(now_ms()), MONTHS_AHEAD)).name
            assert counts[last] == 0, "the coming months are made with the table"
            assert len(counts) == 14 + 1 + MONTHS_AHEAD, "every month from the oldest record on, none skipped"
            assert await rows(store) == before, "every column of every row as it was"
            assert (await verify(store))[CHAIN].ok

            clock.stamp = now_ms()
            writer = await open_writer(store, clock=clock)  # the chain goes on from its head
            await write_at(writer, clock, [now_ms()])
            await writer.close()
            report = (await verify(store))[CHAIN]
            assert report.ok and report.head_height == 5
            async with engine.connect() as connection:
                keys = await connection.execute(
                    text(
                        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                        " WHERE conrelid = 'audit_records'::regclass ORDER BY conname"
                    )
                )
                assert [row[0] for row in keys] == [
                    "PRIMARY KEY (chain_id, height, ts_ms)",
                    "UNIQUE (record_id, ts_ms)",
                ]
        finally:
            await engine.dispose()

        await asyncio.to_thread(command.downgrade, db.alembic_config(settings), BEFORE)  # and back, rows kept
        engine = db.create_engine(settings)
        try:
            store = Store(settings, engine, "postgres")
            assert len(await rows(store)) == 5 and (await verify(store))[CHAIN].ok
            async with engine.connect() as connection:
                kind = text("SELECT relkind::text FROM pg_class WHERE relname = 'audit_records'")
                assert (await connection.execute(kind)).scalar() == "r"
        finally:
            await engine.dispose()
    finally:
        await drop_database(url)


async def test_a_write_never_fails_at_a_month_boundary(store: Store) -> None:
    this_month = month_partition(*month_of(now_ms()))
    next_month = month_partition(*shift(*month_of(now_ms()), 1))
    beyond = month_partition(*shift(*month_of(now_ms()), MONTHS_AHEAD + 2))  # past every month made ahead
    assert beyond.name not in await partitions_of(store)
    clock = Clock(now_ms())
    writer = await open_writer(store, clock=clock)
    try:
        edge = this_month.high_ms
        await write_at(writer, clock, [edge - 1, edge, edge + 1, beyond.low_ms - 1, beyond.low_ms])
    finally:
        await writer.close()
    counts = await partitions_of(store)
    assert counts[this_month.name] == 1 and counts[next_month.name] == 2
    assert counts[beyond.name] == 1, "a month nobody made is made by the batch that needs it"
    assert counts[month_partition(*shift(*month_of(beyond.low_ms), -1)).name] == 1
    assert (await verify(store))[CHAIN].ok


async def test_the_periodic_task_makes_the_coming_months(store: Store) -> None:
    clock = Clock(now_ms())
    writer = await open_writer(store, clock=clock, partition_seconds=0.05)
    try:
        later = month_partition(*shift(*month_of(now_ms()), MONTHS_AHEAD + 1))
        assert later.name not in await partitions_of(store)
        clock.stamp = later.low_ms - 20 * DAY_MS  # time passes; nothing is written
        for _ in range(100):
            if later.name in await partitions_of(store):
                break
            await asyncio.sleep(0.05)
        made = await partitions_of(store)
        assert later.name in made and month_partition(*shift(*month_of(clock.stamp), MONTHS_AHEAD)).name in made
    finally:
        await writer.close()


async def test_archiving_drops_whole_months_once_their_files_verify(store: Store) -> None:
    clock = Clock(months_back(8))
    writer = await open_writer(store, clock=clock, every=3)
    other = await open_writer(store, clock=clock, every=1000, chain_id="node-2", witness=None)
    try:
        # node-1, a checkpoint every 3 heights: 1 in month -8, 2 in -7 (signed only at 3, in -6), 3-4 in -6 (4 signed
        # only at 6, in -2), 5-6 in -2.
        stamps = [months_back(8), months_back(7), months_back(6), months_back(6, 12), months_back(2), months_back(2, 5)]
        await write_at(writer, clock, stamps)
        await write_at(other, clock, [months_back(7, 15)])  # node-2: signed when it closes
    finally:
        await other.close()
        await writer.close()
    trusted = trusted_keys(store.settings)
    before = await partitions_of(store)
    month = {m: month_partition(*month_of(months_back(m))).name for m in (8, 7, 6, 2)}

    with pytest.raises(ArchiveError):  # a file that does not verify (here: no key trusted) drops nothing
        await archive_log(store.engine, store.settings.archive_dir, before_ms=months_back(6, 20), trusted=_stranger())
    assert await partitions_of(store) == before

    run = await archive_log(store.engine, store.settings.archive_dir, before_ms=months_back(6, 20), trusted=trusted)
    assert run.partitioned and run.through_ms == month_partition(*month_of(months_back(6))).low_ms
    assert {p.name for p in run.dropped} == {month[8], month[7]}, "the month the date falls in waits for its end"
    assert all(not result.removed for result in run.archives) and not run.waiting
    by_chain = {result.chain_id: (result.from_height, result.to_height) for result in run.archives}
    assert by_chain == {CHAIN: (1, 3), "node-2": (1, 1)}, "to the first checkpoint after each chain's month -7"
    after = await partitions_of(store)
    assert month[8] not in after and month[7] not in after and after[month[6]] == 2
    assert [row["height"] for row in await rows(store)] == [3, 4, 5, 6], "height 3 is archived, and stays its month"
    report = (await verify(store))[CHAIN]
    assert report.ok and report.records == 6 and report.archives == 1, report

    run = await archive_log(store.engine, store.settings.archive_dir, before_ms=months_back(5, 2), trusted=trusted)
    assert {p.name for p in run.dropped} == {month[6]} and not run.waiting
    assert [(r.chain_id, r.from_height, r.to_height) for r in run.archives] == [(CHAIN, 4, 6)]
    assert [row["height"] for row in await rows(store)] == [5, 6]
    reports = await verify(store)
    assert reports[CHAIN].ok and reports[CHAIN].records == 6 and reports[CHAIN].archives == 2
    assert reports["node-2"].ok and reports["node-2"].records == 1


async def test_a_month_with_unsigned_records_waits(store: Store) -> None:
    clock = Clock(months_back(5))
    writer = await open_writer(store, clock=clock, every=1000)
    await write_at(writer, clock, [months_back(5), months_back(5, 3)])
    writer._signer = None  # a node that died before signing its last records, and never came back
    await writer.close()
    run = await archive_log(
        store.engine, store.settings.archive_dir, before_ms=months_back(2), trusted=trusted_keys(store.settings)
    )
    name = month_partition(*month_of(months_back(5))).name
    assert not run.archives and name not in {p.name for p in run.dropped}
    assert any(name in why and "no signed checkpoint" in why for why in run.waiting), run.waiting
    assert (await partitions_of(store))[name] == 2


async def test_search_reads_across_months_newest_first(store: Store) -> None:
    clock = Clock(months_back(4))
    writer = await open_writer(store, clock=clock)
    stamps = [months_back(4), months_back(3), months_back(3, 20), months_back(1), months_back(0, 1)]
    try:
        await write_at(writer, clock, stamps)
        clock.stamp = months_back(2)
        await writer.append(event(9, subject="91350200MA2Y0000XX"))  # another subject, in another month
    finally:
        await writer.close()
    hashes = subject_hashes(writer.keyring, "91110000600037341L")
    found: list[dict[str, Any]] = []
    after = None
    while True:  # two at a time: every page boundary falls between months
        page = await search_records(store.engine, AuditQuery(subject_hashes=hashes), after=after, limit=2)
        found += page
        if len(page) < 2:
            break
        after = (page[-1]["ts_ms"], page[-1]["chain_id"], page[-1]["height"])
    assert [row["ts_ms"] for row in found] == sorted(stamps, reverse=True)

    window = AuditQuery(from_ms=months_back(3), to_ms=months_back(1, 20))
    assert [row["ts_ms"] for row in await search_records(store.engine, window, after=None, limit=10)] == [
        months_back(1),
        months_back(2),
        months_back(3, 20),
        months_back(3),
    ]
    async with store.engine.connect() as connection:  # a time range reads only its own months
        plan = "\n".join(
            row[0]
            for row in await connection.execute(
                text("EXPLAIN SELECT * FROM audit_records WHERE ts_ms >= :a AND ts_ms < :b"),
                {"a": months_back(3), "b": months_back(3, 20)},
            )
        )
    assert month_partition(*month_of(months_back(3))).name in plan
    assert month_partition(*month_of(months_back(4))).name not in plan
    assert month_partition(*month_of(months_back(1))).name not in plan


def _stranger() -> Any:
    from security.checkpoints import TrustedKeys

    return TrustedKeys([generate_ed25519().public_key()])
