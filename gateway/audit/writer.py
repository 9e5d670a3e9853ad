"""The audit writer: records sealed, chained, group-committed and checkpointed into the database.

Every caller of `append` waits until its record is durable. Concurrent appends share one transaction
(group commit): rows go in with one multi-row statement (COPY on PostgreSQL), so durability costs one commit
per batch rather than one per request. The committer seals and chains the rows (gateway/audit/sealing.py): on
SQLite that is its own process, so the event loop only hands over what the exchange recorded. Where the
committer allows (`Committer.depth`), the next batch is sent while one is committing, chained on it. If a commit
fails, every waiter of that batch and of those sent behind it gets `AuditUnavailable` and the gateway answers 503:
no data leaves unlogged. A batch is one transaction, so a crash leaves whole batches or nothing, never a torn
record; on restart the writer continues from the head it finds and signs it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import String, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.commit_failures import CommitFailures
from gateway.audit.committer import Committer, OutOfOrder, PostgresCommitter, SqliteCommitter, describe_error
from gateway.audit.node_keys import register_node_key
from gateway.audit.partitions import MonthGuard, ensure_ahead, ensure_months, ensure_or_list
from gateway.audit.rows import ARCHIVE_TABLE, AUDIT_TABLE, CHECKPOINT_TABLE
from gateway.audit.sealing import RECORD_ID, REQUEST_ID, TS_MS, Entry, Keys, RowSealer
from gateway.audit.witness import append_witness, check_against_witness
from gateway.clock import SYSTEM_CLOCK, Clock, Periodic, periodic
from gateway.storage.db import SQLITE_PRAGMAS
from gateway.storage.health import Dependency, is_database_outage
from gateway.storage.models import AUDIT_COLUMNS
from schemas.errors import MsjxError
from schemas.problems import ProblemCode
from security.audit_chain import GENESIS_HASH
from security.checkpoints import Checkpoint, sign_checkpoint
from security.crypto import get_suite
from security.keyring import KeyRing
from security.keys import PrivateKey

log = logging.getLogger("msjx.audit")
# PostgreSQL refuses a string longer than its column, which would fail a whole batch: values are cut to fit.
STRING_LIMITS = {
    column.name: column.type.length
    for column in AUDIT_TABLE.columns
    if isinstance(column.type, String) and column.type.length
}
# A batch goes into the committer's pipe behind others only while they hold at most this many records: the pipe is
# for the few records of single calls (their wait for an answer's trip back), not for a batch comparison's chunks,
# whose records wait for the commit ahead of them anyway; those stay one commit at a time, as they were measured.
PIPELINE_BEHIND = 64
SQLITE_INSERT = (  # column names come from the model, never from input
    f"INSERT INTO audit_records ({', '.join(AUDIT_COLUMNS)}) VALUES ({', '.join('?' for _ in AUDIT_COLUMNS)})"  # noqa: S608
)
CHECKPOINT_INSERT_SQLITE = (
    "INSERT INTO audit_checkpoints (chain_id, height, head_hash, ts_ms, key_id, signature) VALUES (?, ?, ?, ?, ?, ?)"
)
CHECKPOINT_INSERT_PG = (
    "INSERT INTO audit_checkpoints (chain_id, height, head_hash, ts_ms, key_id, signature)"
    " VALUES ($1, $2, $3, $4, $5, $6)"
)


class AuditUnavailable(MsjxError):
    """The audit store could not make a record durable; the request must fail closed."""


@dataclass
class AuditEvent:
    """What the request path knows about one exchange; the writer turns it into a sealed, chained row."""

    event: str
    request_id: str
    decision: str
    status_code: int
    request_body: bytes = b""
    response_body: bytes = b""
    caller_id: str | None = None
    department: str | None = None
    roles: tuple[str, ...] = ()
    key_id: str | None = None
    client_addr: str | None = None
    method: str | None = None
    path: str | None = None
    service: str | None = None
    operation: str | None = None
    purpose: str | None = None
    grant_id: str | None = None
    subject: str | None = None
    reason_code: str | None = None
    fields: tuple[str, ...] = ()
    upstream_status: str | None = None
    duration_us: int = 0
    upstream_us: int | None = None
    target_id: str | None = None
    reason: str | None = None
    reason_category: str | None = None
    reason_ref: str | None = None
    # Set for a request refused before authentication: only this many first bytes of its body are sealed (its size
    # and digest stay those of the whole body), so that strangers cannot fill the append-only log with their bodies.
    request_kept: int | None = None
    # False for answers that carry decrypted audit payloads: keeping a second sealed copy of them under a newer
    # key would outlive the crypto-shredding of the original. Size and digest are still recorded.
    store_response: bool = True


def new_request_id() -> str:
    return secrets.token_hex(16)


Pending = tuple[Entry, asyncio.Future[dict[str, Any]]]


class AuditWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        chain_id: str,
        keyring: KeyRing,
        suite: str | None = None,
        signer: PrivateKey | None = None,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 10.0,
        witness_path: Path | None = None,
        batch_max: int = 512,
        clock: Clock = SYSTEM_CLOCK,
        health: Dependency | None = None,
        partition_seconds: float = 3600.0,
        commit_deadline: float = 10.0,
    ) -> None:
        self._engine = engine
        # How long a commit (PostgreSQL) or a checkpoint may take before it is given up as failed: a connection
        # whose packets a firewall or a partition drops without a reset never answers, and every call waited on it.
        self._commit_deadline = commit_deadline
        self.health = health or Dependency("database", ProblemCode.DATABASE_UNAVAILABLE)
        self._commit_failures = CommitFailures(log)
        self.chain_id = chain_id
        self.keyring = keyring
        self.suite = suite or keyring.suite
        self._suite = get_suite(self.suite)
        self._committer: Committer
        sealer = RowSealer(self.suite, chain_id, STRING_LIMITS, AUDIT_COLUMNS)
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            if not database or database == ":memory:":  # a second connection would see another database
                raise ValueError("the audit writer needs a SQLite database file, not an in-memory one")
            self._committer = SqliteCommitter(database, SQLITE_PRAGMAS, SQLITE_INSERT, CHECKPOINT_INSERT_SQLITE, sealer)
        else:
            dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._committer = PostgresCommitter(
                dsn, "audit_records", AUDIT_COLUMNS, CHECKPOINT_INSERT_PG, sealer, deadline=commit_deadline
            )
        # Record ids: a random prefix per writer and a counter, unique across nodes and restarts without a syscall each.
        self._id_prefix = secrets.token_hex(8)
        self._sequence = 0
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._checkpoint_ms = int(checkpoint_seconds * 1000)
        self._tick_seconds = max(checkpoint_seconds / 2, 0.05)
        self._witness_path = witness_path
        self._batch_max = batch_max
        self._clock = clock
        # Appends wait here; the writer task takes them a batch at a time (a list swap, no per-item queue calls).
        self._pending: list[Pending] = []
        self._wakeup = asyncio.Event()
        self._tick_due = False
        self._task: asyncio.Task[None] | None = None
        self._ticker: Periodic | None = None
        self._closing = False
        self._resync = False
        # Batches handed to the committer and not yet answered, oldest first, and the records they hold. The
        # committer chains each batch on the last one it committed; it is told the head (`_base_due`) when it starts
        # and after a failure, once the head was read back from the database.
        self._flights: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._base_due = True
        # `height` and `head` are what is committed. A checkpoint by count is signed once its head is committed and
        # goes in with the next batch (`_ready`); `_sealing_height` is the newest one signed (the next count starts
        # there).
        self._ready: Checkpoint | None = None
        self._sealing_height = 0
        # PostgreSQL: the monthly partitions this writer knows are there (None on SQLite, which has one table).
        self._months: MonthGuard | None = None
        self._partition_seconds = partition_seconds
        self._maintainer: Periodic | None = None
        self.height = 0
        self.head = GENESIS_HASH
        self.sealed_height = 0
        self.sealed_ms = 0
        self.last_error: str | None = None
        self.batches = 0

    # --- life cycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.suite not in {row.suite for row in self.keyring.rows() if row.kind == "data" and not row.destroyed}:
            await self.keyring.rotate([self.suite])  # the first data key of a suite the ring has not used yet
        if self._witness_path is not None:
            await check_against_witness(self._engine, self.chain_id, self._witness_path)
        await self._load_head()
        if self._engine.dialect.name == "postgresql":
            partitions = await ensure_or_list(self._engine, self._clock.ms())
            self._months = MonthGuard(partitions) if partitions else None
        await self._committer.open()
        if self._signer is not None:
            await self._register_signer()
            if self.height > self.sealed_height:
                # Seal what a crash (or a stop without shutdown) left unsigned before anything new is added.
                await self.checkpoint()
        self._task = asyncio.create_task(self._run(), name=f"audit-writer-{self.chain_id}")
        if self._months is not None:
            self._maintainer = periodic(
                f"audit-partitions-{self.chain_id}", self._partition_seconds, self._maintain, on_error=_months_not_made
            )
        if self._signer is not None:
            self._ticker = periodic(f"audit-checkpoints-{self.chain_id}", self._tick_seconds, self._tick)

    async def close(self) -> None:
        """Finish queued appends, sign the head (graceful shutdown), stop."""
        if self._task is None:
            await self._committer.close()  # a start that failed after opening the connection
            return
        self._closing = True
        if self._ticker is not None:
            await self._ticker.stop()
        if self._maintainer is not None:
            await self._maintainer.stop()
        self._wakeup.set()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        await self._committer.close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def _load_head(self) -> None:
        async with self._engine.connect() as connection:
            head = (
                await connection.execute(
                    select(AUDIT_TABLE.c.height, AUDIT_TABLE.c.record_hash)
                    .where(AUDIT_TABLE.c.chain_id == self.chain_id)
                    .order_by(AUDIT_TABLE.c.height.desc())
                    .limit(1)
                )
            ).first()
            archived = (
                await connection.execute(
                    select(ARCHIVE_TABLE.c.to_height, ARCHIVE_TABLE.c.head_hash)
                    .where(ARCHIVE_TABLE.c.chain_id == self.chain_id)
                    .order_by(ARCHIVE_TABLE.c.seq.desc())
                    .limit(1)
                )
            ).first()
            sealed = (
                await connection.execute(
                    select(CHECKPOINT_TABLE.c.height, CHECKPOINT_TABLE.c.ts_ms)
                    .where(CHECKPOINT_TABLE.c.chain_id == self.chain_id)
                    .order_by(CHECKPOINT_TABLE.c.height.desc())
                    .limit(1)
                )
            ).first()
        self.height, self.head = 0, GENESIS_HASH
        for found in (archived, head):
            if found is not None and int(found[0]) > self.height:
                self.height, self.head = int(found[0]), str(found[1])
        self.sealed_height, self.sealed_ms = (int(sealed[0]), int(sealed[1])) if sealed is not None else (0, 0)
        self._sealing_height = self.sealed_height
        self._base_due = True

    async def _register_signer(self) -> None:
        assert self._signer is not None
        await register_node_key(self._engine, self.chain_id, self._signer.public_key(), self._clock.ms())

    # --- appending ----------------------------------------------------------------------------------------------

    def subject_hash(self, subject: str) -> str:
        return self._suite.keyed_hash(self.keyring.index_key, subject)

    def entry(self, event: AuditEvent) -> Entry:
        """What the committer seals and chains for `event` (gateway/audit/sealing.py); its id and time are set now."""
        self._sequence += 1
        return (
            f"{self._id_prefix}{self._sequence:016x}",
            self._clock.ms(),
            event.event,
            event.caller_id,
            event.department,
            ",".join(event.roles) or None,
            event.key_id,
            event.client_addr,
            event.request_id,
            event.method,
            event.path,
            event.service,
            event.operation,
            event.purpose,
            event.grant_id,
            event.subject or None,
            event.decision,
            # A ProblemCode is a str subclass, which marshal (the pipe to the committer) refuses: the plain string.
            None if event.reason_code is None else str(event.reason_code),
            ",".join(event.fields) or None,
            event.status_code,
            event.upstream_status,
            event.duration_us,
            event.upstream_us,
            bytes(event.request_body),
            event.request_kept,
            bytes(event.response_body),
            event.store_response,
            event.target_id,
            event.reason,
            event.reason_category,
            event.reason_ref,
        )

    async def append(self, event: AuditEvent) -> dict[str, Any]:
        """Where the record is in its chain once committed (`_appended`); raise AuditUnavailable if it could not be
        made durable."""
        if not self.running:
            raise AuditUnavailable("the audit writer is not running")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((self.entry(event), future))
        self._wakeup.set()
        return await future

    async def append_many(self, events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
        """`append` for many events at once (a batch chunk's records): the same results, futures and failures,
        without a task and a wake-up per record. Raises AuditUnavailable when any of them could not be made durable."""
        if not self.running:
            raise AuditUnavailable("the audit writer is not running")
        loop = asyncio.get_running_loop()
        pending: list[Pending] = [(self.entry(event), loop.create_future()) for event in events]
        self._pending.extend(pending)
        self._wakeup.set()
        return list(await asyncio.gather(*(future for _, future in pending)))

    async def _maintain(self) -> None:
        """Every `partition_seconds`, make sure the coming months' partitions exist (start-up made them first)."""
        assert self._months is not None
        self._months.update(await ensure_ahead(self._engine, self._clock.ms()))

    async def _tick(self) -> None:
        """Let the writer task see whether a checkpoint is due (it signs; this only wakes it)."""
        self._tick_due = True
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._make_room()
                batch = self._pending[: self._batch_max]
                del self._pending[: self._batch_max]
                await self._send(batch)
            if self._ready is not None:  # a checkpoint by count and no batch to carry it: it goes alone
                await self._make_room()
                if self._ready is not None and not self._pending:
                    await self._send([])
            if self._tick_due:
                self._tick_due = False
                if self._checkpoint_due():
                    await self.checkpoint()
            if self._closing and not self._pending:
                await self._land_all()
                if self._signer is not None and self.height > self.sealed_height:
                    await self.checkpoint()
                return

    def _checkpoint_due(self) -> bool:
        return (
            self._signer is not None
            and self.height > self._sealing_height  # nor signed by count and on its way
            and self._clock.ms() - self.sealed_ms >= self._checkpoint_ms
        )

    async def _make_room(self) -> None:
        """Wait until the committer takes another batch: behind at most `depth - 1` small ones (PIPELINE_BEHIND);
        after a failure, until none is in flight (the head is read back from the database before the next one)."""
        while self._flights and (
            self._resync or len(self._flights) >= self._committer.depth or self._in_flight > PIPELINE_BEHIND
        ):
            await asyncio.wait([self._flights[0]])

    async def _land_all(self) -> None:
        """Wait until no batch is in flight (their tasks never raise)."""
        while self._flights:
            await asyncio.wait([self._flights[0]])

    async def _send(self, batch: list[Pending]) -> None:
        """Hand the batch to the committer, which seals it and chains it on the last one it committed (or on the
        head given when `_base_due`); `_fly` reports its outcome."""
        try:
            if self._resync:
                await self._committer.settle()  # a failed batch must not land after the head is read
                await self._load_head()
                self._resync = False
            entries = [entry for entry, _ in batch]
            if self._months is not None and entries:
                missing = self._months.missing([entry[TS_MS] for entry in entries])
                if missing:  # a month nobody made yet: make it now rather than fail the batch
                    self._months.update(await ensure_months(self._engine, missing))
            data_key = self.keyring.current(self.suite)  # no key, no record, no answer: fail closed
            keys: Keys = (data_key.key_id, data_key.secret, self.keyring.index_key)
        except Exception as exc:
            self._failed(batch, exc)
            return
        base = (self.height, self.head) if self._base_due else None
        checkpoint, self._ready = self._ready, None
        self._base_due = False
        self._in_flight += len(batch)
        ahead = self._flights[-1] if self._flights else None
        flight = asyncio.create_task(self._fly(batch, entries, keys, base, checkpoint, ahead))
        self._flights.append(flight)
        flight.add_done_callback(self._flights.remove)

    async def _fly(
        self,
        batch: list[Pending],
        entries: list[Entry],
        keys: Keys,
        base: tuple[int, str] | None,
        checkpoint: Checkpoint | None,
        ahead: asyncio.Task[None] | None,
    ) -> None:
        """Commit one batch and report it, after the batch ahead of it was reported. A batch commits only after the
        one it is chained on did (`Committer.depth`), so a success here means the chain is whole up to it."""
        try:
            committed = await self._committer.commit(
                entries, keys, base=base, checkpoint=_checkpoint_values(checkpoint) if checkpoint is not None else None
            )
        except Exception as exc:
            error: Exception | None = exc
        else:
            error = None
        if ahead is not None:
            await asyncio.wait([ahead])
        self._in_flight -= len(batch)
        if error is not None:
            self._failed(batch, error)
            return
        height, head, hashes = committed
        results = []
        for (entry, _), record_hash in zip(batch, hashes, strict=True):
            height += 1
            results.append(_appended(self.chain_id, entry, height, head, record_hash))
            head = record_hash
        self.height, self.head = height, head
        self.last_error = None
        self.health.succeeded()
        self._commit_failures.succeeded()
        self.batches += 1
        if checkpoint is not None:
            await self._sealed(checkpoint)
        if self._signer is not None and height - self._sealing_height >= self._checkpoint_every:
            self._ready = sign_checkpoint(self._signer, self.chain_id, height, head, self._clock.ms())
            self._sealing_height = height
            self._wakeup.set()
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _failed(self, batch: list[Pending], exc: Exception) -> None:
        """Any store failure reaches every waiter, never a half-known state."""
        # The commit may have happened before the error reached us: read the head again before the next batch.
        self._resync = True
        # A checkpoint signed and not committed is signed again, once the count is reached anew.
        self._ready = None
        self._sealing_height = self.sealed_height
        self.last_error = type(exc).__name__
        if is_database_outage(exc):  # one warning when the store goes, one when it is back; counted between
            self.health.failed(exc)
        else:
            # The whole error, not just its class: "CommitterError" alone told an operator nothing.
            cause = describe_error(exc)
            self._commit_failures.failed(cause, len(batch), follow_on=OutOfOrder.__name__ + ": " in cause)
        for _, future in batch:
            if not future.done():
                future.set_exception(AuditUnavailable("the audit store could not commit the record"))

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current (committed) head now, in a transaction of its own; None if there is nothing to sign (or
        it is signed already)."""
        if self._signer is None:
            return None
        # Two checkpoints of one height collide in the table, and the batch carrying one of them would fail: this one
        # comes after any in the committer's pipe, and replaces one by count not sent yet (no await in between).
        await self._land_all()
        if self._ready is not None:
            self._ready = None
            self._sealing_height = self.sealed_height
        if self.height == 0 or self.height <= self.sealed_height:
            return None
        checkpoint = sign_checkpoint(self._signer, self.chain_id, self.height, self.head, self._clock.ms())
        try:
            async with asyncio.timeout(self._commit_deadline), self._engine.begin() as connection:
                await connection.execute(insert(CHECKPOINT_TABLE).values(**checkpoint.to_dict()))
        except Exception as exc:  # a missed checkpoint is retried at the next tick; appends go on
            if is_database_outage(exc):  # said once by the store's health, not at every tick of the outage
                self.health.failed(exc)
            else:
                log.error("audit checkpoint at height %d failed: %s", self.height, describe_error(exc))
            return None
        await self._sealed(checkpoint)
        return checkpoint

    async def _sealed(self, checkpoint: Checkpoint) -> None:
        # Forward only: a timed checkpoint of the committed head can end after a batch behind it brought its own.
        if checkpoint.height > self.sealed_height:
            self.sealed_height, self.sealed_ms = checkpoint.height, checkpoint.ts_ms
        self._sealing_height = max(self._sealing_height, checkpoint.height)
        if self._witness_path is not None:
            try:
                await asyncio.to_thread(append_witness, self._witness_path, checkpoint)
            except OSError as exc:
                log.error("cannot append checkpoint to %s: %s", self._witness_path, exc.strerror)


def _appended(chain_id: str, entry: Entry, height: int, prev_hash: str, record_hash: str) -> dict[str, Any]:
    """What `append` returns of a committed record: where it is in its chain (the sealed row stays in the store)."""
    return {
        "chain_id": chain_id,
        "record_id": entry[RECORD_ID],
        "ts_ms": entry[TS_MS],
        "request_id": entry[REQUEST_ID],
        "height": height,
        "prev_hash": prev_hash,
        "record_hash": record_hash,
    }


def _checkpoint_values(checkpoint: Checkpoint) -> tuple[Any, ...]:
    return (
        checkpoint.chain_id,
        checkpoint.height,
        checkpoint.head_hash,
        checkpoint.ts_ms,
        checkpoint.key_id,
        checkpoint.signature,
    )


def _months_not_made(exc: Exception) -> None:
    # Months ahead give slack: the next run, or a batch that needs it, retries.
    log.warning("audit partitions for the coming months could not be made: %s", describe_error(exc))
