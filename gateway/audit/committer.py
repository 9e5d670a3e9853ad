"""The audit log's commit paths: each owns its database connection and makes one batch durable per call.

Each is given what exchanges recorded (`gateway.audit.sealing.Entry`), seals and chains it on the last batch it
committed, and answers where the batch went: the height and head it was chained on and each record's hash.
`PostgresCommitter` holds one asyncpg connection of its own. `SqliteCommitter` is a child process that owns the
SQLite connection, and seals there, off the event loop.

Why a process: a commit is mostly a wait for fsync, and a thread that waits has to take the GIL back to report,
which it gets only when the event loop's thread lets go of it; under load that was most of a request's latency
(docs/performance.md). A child has its own interpreter, so the event loop only writes a batch to a pipe and reads
a short answer back, both through the loop's own I/O, and the sealing is the child's CPU, not the loop's. The
child is `python -m gateway.audit.committer DB INSERT CHECKPOINT_INSERT SEALING PRAGMA...`:
it imports nothing of the gateway but `gateway.audit.sealing` (which imports only `security`), reads frames on
stdin, answers on stdout, and exits when stdin closes, so it never outlives the gateway.

A frame (`security.pipes`) holds `marshal` data: (entries, the keys to seal them with, the (height, head) to chain
them on or None to go on from the last batch, checkpoint values or None); both ends are this file, over a pipe
nobody else holds. The answer is b"\\x00" and a frame of (height, head, record hashes) once COMMIT has returned,
or b"\\x01", a 2-byte length and the error as "Class: message" (SQLite's messages name tables, columns and
constraints, never a row's values), which the gateway logs: an operator needs "database is locked" or "disk I/O
error", not just the class.

Up to PIPELINE_DEPTH batches may be in the pipe at once, answered in order. A batch goes on from the one before
it, so after a failure the child refuses every batch until one comes with the head to chain on (which the writer
reads back from the database): those sent behind a failed one fail too, and no chain ever has a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import signal
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gateway.audit.sealing import Entry, Keys, RowSealer
from schemas.errors import MsjxError
from security.pipes import FRAME_HEADER, frame, read_frame, say_ready, start_child

if TYPE_CHECKING:  # the child process imports nothing it does not need
    import asyncpg

ERROR_HEADER = struct.Struct(">H")
OK = b"\x00"
FAILED = b"\x01"
MAX_ERROR_BYTES = 500
# Seconds between two checkpoints of the write-ahead log at most (WalCheckpointer): at a batch's pace, about 1.5 MB
# of log each.
CHECKPOINT_INTERVAL = 0.25
# How often a commit asks for the database's write lock while another connection holds it (`_begin`).
BUSY_POLL = 0.0002
# Batches in the committer's pipe at once. With one, records that came during a commit waited for its answer to
# travel back before they were even sent: at half load that was about a quarter of a call's audit wait
# (docs/performance.md, "Two batches in the audit committer's pipe").
PIPELINE_DEPTH = 2
# A PostgreSQL batch of at most this many records goes in as one prepared INSERT run for each (asyncpg's executemany:
# one round trip, all rows or none); a bigger one as one COPY. Why: a COPY takes two round trips (the server answers
# the COPY before the rows go), so for the one to four records of a batch of single calls it cost the event loop
# 50-150 µs more a batch; from about eight records on COPY is as cheap and its commit is quicker (docs/performance.md).
COPY_ABOVE = 4


def describe_error(exc: BaseException) -> str:
    """ "Class: message" on one line, as the audit log's errors are reported; the class alone if it has no message."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class CommitterError(MsjxError):
    """The committer process is gone or refused a batch; the batch may or may not have been committed."""


# What a commit answers: the height and head the batch was chained on, and each of its records' hashes.
Committed = tuple[int, str, list[str]]


class Committer(Protocol):
    """What the audit writer needs of a database: open, seal, chain and commit one batch (whole or not at all), close.

    A batch is chained on `base` (height, head) when given, else on the last batch committed; after a failure, a
    batch without `base` is refused. `depth` is how many batches may be in `commit` at once; they commit in the
    order their calls began."""

    depth: int

    async def open(self) -> None: ...

    async def commit(
        self,
        entries: list[Entry],
        keys: Keys,
        *,
        base: tuple[int, str] | None,
        checkpoint: tuple[Any, ...] | None,
    ) -> Committed: ...

    async def settle(self) -> None:
        """Make sure no statement of a batch that failed can still land: the writer then reads the head again."""
        ...

    async def close(self) -> None: ...


class OutOfOrder(MsjxError):
    """A batch without the head to chain on, after the batch before it failed."""


class Chain:
    """The (height, head) a committer goes on from: set by a batch's `base`, moved by each commit, forgotten when
    one fails (what was committed is then known only to the database)."""

    def __init__(self) -> None:
        self.at: tuple[int, str] | None = None

    def take(self, base: tuple[int, str] | None) -> tuple[int, str]:
        """Where a batch goes on (`base` if given), forgotten until `moved` says the batch was committed."""
        at = (int(base[0]), str(base[1])) if base is not None else self.at
        if at is None:
            raise OutOfOrder("the batch does not say where to chain it, and the batch before it failed")
        self.at = None
        return at

    def moved(self, height: int, head: str, hashes: list[str]) -> None:
        self.at = (height + len(hashes), hashes[-1]) if hashes else (height, head)


class PostgresCommitter:
    """A connection of its own, so a batch costs one statement and nothing else (BEGIN and COMMIT around it only when
    a checkpoint goes in with it): a pooled connection added a liveness ping when taken and a ROLLBACK when given
    back. The statement is an INSERT for each record of a small batch, a COPY of a bigger one (COPY_ABOVE). A failed
    batch drops the connection (whatever state it was left in) and the next batch opens a new one. One batch at a
    time: a connection runs one statement at a time. It seals on the event loop (asyncpg runs there)."""

    depth = 1

    def __init__(
        self,
        dsn: str,
        table: str,
        columns: Sequence[str],
        checkpoint_insert: str,
        sealer: RowSealer,
        deadline: float = 10.0,
    ) -> None:
        self._sealer = sealer
        self._deadline = deadline
        self._chain = Chain()
        self._dsn = dsn
        self._table = table
        self._columns = list(columns)
        parameters = ", ".join(f"${number}" for number in range(1, len(columns) + 1))
        # The table and column names are the writer's own, from the model, never from input.
        self._insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({parameters})"  # noqa: S608
        self._checkpoint_insert = checkpoint_insert
        self._connection: asyncpg.Connection | None = None
        # The server process of a connection dropped with a batch on it: until it is gone, that batch may still land.
        self._abandoned: int | None = None

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL server process serving this connection (for operators and tests), else None."""
        connection = self._connection
        return connection.get_server_pid() if connection is not None and not connection.is_closed() else None

    async def open(self) -> None:
        import asyncpg

        from gateway.storage.durability import DURABLE_SESSION

        self._connection = await asyncpg.connect(self._dsn, timeout=30)
        await self._connection.execute(DURABLE_SESSION)

    async def commit(
        self,
        entries: list[Entry],
        keys: Keys,
        *,
        base: tuple[int, str] | None,
        checkpoint: tuple[Any, ...] | None,
    ) -> Committed:
        height, head = self._chain.take(base)
        records, hashes = self._sealer.chain(entries, keys, height, head)
        connection = self._connection
        if connection is None or connection.is_closed():
            await self.open()
            connection = self._connection
            assert connection is not None
        try:
            # A connection whose packets a firewall or a partition drops without a reset never answers: without a
            # deadline every call waited on its record for good (until the client gave up), and so did shutdown.
            async with asyncio.timeout(self._deadline):
                if checkpoint is None:
                    # Either statement is its own transaction: all rows or none, without the two round trips of
                    # BEGIN and COMMIT.
                    await self._insert_records(connection, records)
                else:
                    async with connection.transaction():  # a checkpoint signs a head committed before it
                        if records:
                            await self._insert_records(connection, records)
                        await connection.execute(self._checkpoint_insert, *checkpoint)
        except BaseException:
            self._connection = None
            self._abandoned = connection.get_server_pid()
            connection.terminate()
            raise
        self._chain.moved(height, head, hashes)
        return height, head, hashes

    async def settle(self) -> None:
        """A connection dropped with its batch unanswered (the deadline passed; a partition that heals) may still
        carry the batch to its server process, which would commit it after the head was read again: a second record
        at a height. The process is ended first, from a new connection, and the head read after it is gone."""
        pid = self._abandoned
        if pid is None:
            return
        if self._connection is None or self._connection.is_closed():
            await self.open()
        connection = self._connection
        assert connection is not None
        async with asyncio.timeout(self._deadline):
            await connection.execute("SELECT pg_terminate_backend($1)", pid)
            # The signal is asynchronous (the process ends when it next looks), and nothing tells when: poll.
            while await connection.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        self._abandoned = None

    async def _insert_records(self, connection: asyncpg.Connection, records: list[tuple[Any, ...]]) -> None:
        if len(records) > COPY_ABOVE:
            await connection.copy_records_to_table(self._table, records=records, columns=self._columns)
        else:
            await connection.executemany(self._insert, records)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):  # closing is best effort: the server drops it anyway
                await asyncio.wait_for(connection.close(), 10)


class SqliteCommitter:
    """The gateway's side: start the child, send it up to PIPELINE_DEPTH batches at a time, stop it."""

    depth = PIPELINE_DEPTH

    def __init__(
        self,
        path: str,
        pragmas: Sequence[str],
        insert: str,
        checkpoint_insert: str,
        sealer: RowSealer,
    ) -> None:
        """`sealer`: what the child seals with, rebuilt there from its spec."""
        self._arguments = (path, insert, checkpoint_insert, sealer.spec(), *pragmas)
        # Where the last batch answered went: a new process goes on from it (a process that died idle lost nothing).
        self._chain = Chain()
        self._process: asyncio.subprocess.Process | None = None
        # Sending is one caller at a time, in the order they came (asyncio's lock is fair); each answer is read by
        # the caller whose frame it answers, once the caller before it has read its own (`_turn`).
        self._sending = asyncio.Lock()
        self._turn: asyncio.Future[bool] | None = None
        self._in_pipe = 0

    @property
    def pid(self) -> int | None:
        """The committer process's id while it runs (for operators and tests), else None."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def open(self) -> None:
        process = await start_child("gateway.audit.committer", *self._arguments)
        if process is None:
            raise CommitterError("the audit committer process did not start (its errors are on the gateway's stderr)")
        self._process = process

    async def commit(
        self,
        entries: list[Entry],
        keys: Keys,
        *,
        base: tuple[int, str] | None,
        checkpoint: tuple[Any, ...] | None,
    ) -> Committed:
        async with self._sending:
            process = self._process
            if process is None or process.returncode is not None:
                if self._in_pipe:
                    # The batches ahead died with it, and a new process would commit this one after a gap.
                    raise CommitterError("the audit committer process is gone with the batch ahead of this one")
                # Started again for the next batch, which goes on from the last batch answered; none after a failed
                # one (the writer then reads the head back from the database and gives it).
                self._process, self._turn = None, None
                await self.open()
                process = self._process
                assert process is not None
                if base is None:
                    base = self._chain.at
            payload = frame(marshal.dumps((entries, keys, base, checkpoint)))
            assert process.stdin is not None and process.stdout is not None
            ahead, turn = self._turn, asyncio.get_running_loop().create_future()
            self._turn = turn
            self._in_pipe += 1
            try:
                process.stdin.write(payload)
                await process.stdin.drain()
            except BaseException as exc:
                self._finish(turn, whole=False)
                raise self._cut_off(process, exc) from None
        whole = False
        try:
            # An answer left unread ahead of this one would be taken for this batch's.
            if ahead is not None and not await asyncio.shield(ahead):
                raise CommitterError("the audit committer was cut off with the batch ahead of this one")
            status = await process.stdout.readexactly(1)
            if status == OK:
                (size,) = FRAME_HEADER.unpack(await process.stdout.readexactly(FRAME_HEADER.size))
                # Written by our own child, on a private pipe.
                height, head, hashes = marshal.loads(await process.stdout.readexactly(size))  # noqa: S302
                whole = True
                self._chain.moved(height, head, hashes)
                return height, head, hashes
            (length,) = ERROR_HEADER.unpack(await process.stdout.readexactly(ERROR_HEADER.size))
            error = (await process.stdout.readexactly(length)).decode("utf-8", "replace")
            whole = True
        except BaseException as exc:
            self._chain.at = None
            raise self._cut_off(process, exc) from None
        finally:
            self._finish(turn, whole)
        self._chain.at = None
        raise CommitterError(f"the audit committer could not commit: {error}")

    def _finish(self, turn: asyncio.Future[bool], whole: bool) -> None:
        """This caller's turn to read is over; `whole`: it read all its answer, so the next is the next batch's."""
        self._in_pipe -= 1
        turn.set_result(whole)

    def _cut_off(self, process: asyncio.subprocess.Process, exc: BaseException) -> BaseException:
        """Cut off mid-frame or mid-answer (gone, or cancelled): its next answer could belong to this batch, so it is
        never asked again, and the batches behind this one fail with it; the next batch starts another."""
        if self._process is process:
            self._process = None
        with contextlib.suppress(ProcessLookupError):  # already gone
            process.kill()
        if isinstance(exc, OSError | asyncio.IncompleteReadError):
            return CommitterError(f"the audit committer process is gone ({type(exc).__name__})")
        return exc

    async def settle(self) -> None:
        """Nothing to wait for: a batch is the child's, which answers each one, or is gone with it."""

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()  # end of input: the child closes the database and exits
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


# --- the child ---------------------------------------------------------------------------------------------------


class WalCheckpointer(threading.Thread):
    """Copies the write-ahead log into the database file beside the commits, on a connection of its own.

    The committer's connection does not checkpoint (`wal_autocheckpoint=0`): SQLite runs an automatic checkpoint
    inside the COMMIT that fills the log past 1,000 pages, so that one record waited for thousands of others to be
    copied and synced. During a batch comparison a commit's p99 was 17 ms and its longest 26 against 1 at the median,
    and interactive calls waited behind them. A PASSIVE checkpoint takes no write lock: commits go on meanwhile, and
    the log starts again from its beginning once a checkpoint has copied all of it.
    """

    def __init__(self, path: str, pragmas: Sequence[str], interval: float = CHECKPOINT_INTERVAL) -> None:
        super().__init__(name="wal-checkpointer", daemon=True)
        self._path, self._pragmas, self._interval = path, pragmas, interval
        self._due = threading.Event()
        self._stopping = threading.Event()

    def nudge(self) -> None:
        """A commit added to the log."""
        self._due.set()

    def stop(self) -> None:
        self._stopping.set()
        self._due.set()
        self.join(30)

    def run(self) -> None:
        connection = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        try:
            for pragma in self._pragmas:
                connection.execute(pragma)
            while True:
                self._due.wait()
                if self._stopping.is_set():
                    return
                self._due.clear()
                with contextlib.suppress(sqlite3.Error):  # the next commit's nudge tries again
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                # At most one checkpoint an interval, however many commits came; a stop ends the wait at once (a
                # plain sleep held every close of the gateway for up to the interval).
                if self._stopping.wait(self._interval):
                    return
        finally:
            connection.close()


def serve(path: str, insert: str, checkpoint_insert: str, sealer: RowSealer, pragmas: Sequence[str]) -> None:
    # Autocommit mode: the transaction is the explicit BEGIN IMMEDIATE ... COMMIT below, nothing implicit.
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    for pragma in pragmas:
        connection.execute(pragma)
    connection.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job, off the commit path
    checkpointer = WalCheckpointer(path, pragmas)
    checkpointer.start()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    say_ready(stdout)
    chain = Chain()
    try:
        while (payload := read_frame(stdin)) is not None:
            # Written by our own parent, on a private pipe.
            entries, keys, base, checkpoint = marshal.loads(payload)  # noqa: S302
            try:
                height, head = chain.take(base)
                records, hashes = sealer.chain(entries, keys, height, head)
                _commit(connection, insert, checkpoint_insert, records, checkpoint)
            except Exception as exc:  # the gateway fails the batch closed; this process stays for the next
                error = describe_error(exc).encode("utf-8", "replace")[:MAX_ERROR_BYTES]
                stdout.write(FAILED + ERROR_HEADER.pack(len(error)) + error)
            else:
                chain.moved(height, head, hashes)
                stdout.write(OK + frame(marshal.dumps((height, head, hashes))))
                checkpointer.nudge()
            stdout.flush()
    finally:
        checkpointer.stop()
        connection.close()


def _begin(connection: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, asked again every BUSY_POLL seconds while another connection holds the write lock, for as
    long as the connection's own busy timeout (the pragmas' busy_timeout).

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15... ms between tries, so a lock held 3 ms by the gateway's other
    writes (a batch's chunk results) cost a record waiting here 8 ms and more: during a batch a single record's
    BEGIN took 10 ms at p99 and 37 at most, against 0.05 at the median."""
    (timeout_ms,) = connection.execute("PRAGMA busy_timeout").fetchone()
    connection.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                # The low byte: SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT...).
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(BUSY_POLL)
    finally:
        connection.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")


def _commit(
    connection: sqlite3.Connection,
    insert: str,
    checkpoint_insert: str,
    records: list[tuple[Any, ...]],
    checkpoint: tuple[Any, ...] | None,
) -> None:
    _begin(connection)
    try:
        connection.executemany(insert, records)
        if checkpoint is not None:  # the writer signs only heads already committed
            connection.execute(checkpoint_insert, checkpoint)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def main(argv: Sequence[str]) -> None:
    # Ctrl-C in a terminal, or SIGTERM to the whole process group, is for the gateway: it flushes its last batch
    # through this process during shutdown and then closes stdin, which is what ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path, insert, checkpoint_insert, spec, *pragmas = argv
    try:
        serve(path, insert, checkpoint_insert, RowSealer.from_spec(spec), pragmas)
    except BrokenPipeError:  # the gateway went away: nothing is left to answer
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
