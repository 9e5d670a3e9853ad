"""The audit log in the database: the writer (sealed, chained, group-committed, checkpointed), verification, search.

Every caller of `append` waits until its record is durable. Concurrent appends share one transaction
(group commit): rows go in with one multi-row statement (COPY on PostgreSQL), so durability costs one commit
per batch rather than one per request. If the commit fails, every waiter gets `AuditUnavailable` and the
gateway answers 503: no data leaves unlogged. A batch is one transaction, so a crash leaves whole batches
or nothing, never a torn record; on restart the writer continues from the head it finds and signs it.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import String, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.committer import Committer, PostgresCommitter, SqliteCommitter, describe_error
from gateway.audit.files import AuditFileError, digest_suite, file_digest, scan, verify_file
from gateway.audit.node_keys import build_trust, list_node_keys, register_node_key
from gateway.settings import Settings
from gateway.storage.db import SQLITE_PRAGMAS
from gateway.storage.health import Dependency, is_database_outage
from gateway.storage.models import AUDIT_COLUMNS, AuditArchive, AuditCheckpoint, AuditRecord, AuditSigner
from security.audit_chain import (
    GENESIS_HASH,
    HASH_FIELD,
    PREV_FIELD,
    ChainFault,
    ChainReport,
    ChainVerifier,
    drop_empty_optional,
    hasher_for,
)
from security.checkpoints import Checkpoint, TrustedKeys, sign_checkpoint
from security.crypto import SUITE_NAMES, DecryptionError, NonceSequence, get_suite
from security.key_trust import KeyTrust
from security.keyring import KeyRing, now_ms
from security.keys import (
    ED25519,
    SM2_SM3,
    KeyFormatError,
    PrivateKey,
    PublicKey,
    load_or_create_signing_key,
    load_public_key,
    public_key_pem,
    write_secret_file,
)

log = logging.getLogger("msjx.audit")
AUDIT_TABLE = AuditRecord.__table__
CHECKPOINT_TABLE = AuditCheckpoint.__table__
SIGNER_TABLE = AuditSigner.__table__
ARCHIVE_TABLE = AuditArchive.__table__
# PostgreSQL refuses a string longer than its column, which would fail a whole batch: values are cut to fit.
STRING_LIMITS = {
    column.name: column.type.length
    for column in AUDIT_TABLE.columns
    if isinstance(column.type, String) and column.type.length
}
# Rows as the verifier likes them: keys in sorted order (so the canonical JSON needs no sort), the hash last.
READ_COLUMNS = (*sorted(name for name in AUDIT_COLUMNS if name != HASH_FIELD), HASH_FIELD)
# Columns a caller can fill with anything (paths, key ids, header values): checked on every record.
LIMITED_COLUMNS = tuple(
    (name, limit)
    for name, limit in STRING_LIMITS.items()
    if name not in ("chain_id", "record_id", "request_id", "subject_hash", "suite", "data_key_id", "target_id")
    and name not in ("reason_category", "reason_ref")  # officer columns: set (and cut) only when present
    and name not in ("prev_hash", "record_hash", "request_digest", "response_digest")
)
ROW_VALUES = operator.itemgetter(*AUDIT_COLUMNS)
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
SIGNING_KEY_FILE = "audit-signing.key"
SIGNING_PUB_FILE = "audit-signing.pub.pem"
# The checkpoint key of each suite: Ed25519 for `standard`, SM2 (SM3, default user id) for `sm`, in its own file, so
# a node that changes suite keeps the old key and every checkpoint it signed still verifies.
SIGNING_FILES = {
    "standard": (ED25519, SIGNING_KEY_FILE, SIGNING_PUB_FILE),
    "sm": (SM2_SM3, "audit-signing-sm2.key", "audit-signing-sm2.pub.pem"),
}


class AuditUnavailable(Exception):
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


def _clean(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        value = value.replace("\x00", "\\0")
    limit = STRING_LIMITS.get(name)
    return value[:limit] if limit is not None and len(value) > limit else value


Pending = tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]


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
        clock: Any = now_ms,
        health: Dependency | None = None,
    ) -> None:
        self._engine = engine
        self.health = health or Dependency("database", "database_unavailable", "Database unavailable")
        self._committer: Committer
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            if not database or database == ":memory:":  # a second connection would see another database
                raise ValueError("the audit writer needs a SQLite database file, not an in-memory one")
            self._committer = SqliteCommitter(database, SQLITE_PRAGMAS, SQLITE_INSERT, CHECKPOINT_INSERT_SQLITE)
        else:
            dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._committer = PostgresCommitter(dsn, "audit_records", AUDIT_COLUMNS, CHECKPOINT_INSERT_PG)
        self.chain_id = chain_id
        self.keyring = keyring
        self.suite = suite or keyring.suite
        self._suite = get_suite(self.suite)
        self._hasher = hasher_for(self.suite)
        self._nonces = NonceSequence()
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
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
        self._resync = False
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
        await self._load_head()
        await self._committer.open()
        if self._signer is not None:
            await self._register_signer()
            if self.height > self.sealed_height:
                # Seal what a crash (or a stop without shutdown) left unsigned before anything new is added.
                await self.checkpoint()
        self._task = asyncio.create_task(self._run(), name=f"audit-writer-{self.chain_id}")
        if self._signer is not None:
            self._ticker = asyncio.create_task(self._tick(), name=f"audit-checkpoints-{self.chain_id}")

    async def close(self) -> None:
        """Finish queued appends, sign the head (graceful shutdown), stop."""
        if self._task is None:
            await self._committer.close()  # a start that failed after opening the connection
            return
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
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

    async def _register_signer(self) -> None:
        assert self._signer is not None
        await register_node_key(self._engine, self.chain_id, self._signer.public_key(), self._clock())

    # --- appending ----------------------------------------------------------------------------------------------

    def subject_hash(self, subject: str) -> str:
        return self._suite.keyed_hash(self.keyring.index_key, subject)

    def build_row(self, event: AuditEvent) -> dict[str, Any]:
        """Every column but height and hashes, which only the writer task may assign."""
        suite = self._suite
        data_key = self.keyring.current(self.suite)
        index_key = self.keyring.index_key
        self._sequence += 1
        record_id = f"{self._id_prefix}{self._sequence:016x}"
        aad = f"{self.chain_id}/{record_id}".encode()
        nonces = self._nonces
        request_body, response_body = event.request_body, event.response_body
        kept_body = request_body if event.request_kept is None else request_body[: event.request_kept]
        row = {
            "chain_id": self.chain_id,
            "record_id": record_id,
            "ts_ms": self._clock(),
            "event": event.event,
            "caller_id": event.caller_id,
            "department": event.department,
            "roles": ",".join(event.roles) or None,
            "key_id": event.key_id,
            "client_addr": event.client_addr,
            "request_id": event.request_id,
            "method": event.method,
            "path": event.path,
            "service": event.service,
            "operation": event.operation,
            "purpose": event.purpose,
            "grant_id": event.grant_id,
            "subject_hash": suite.keyed_hash(index_key, event.subject) if event.subject else None,
            "decision": event.decision,
            "reason_code": event.reason_code,
            "fields": ",".join(event.fields) or None,
            "status_code": event.status_code,
            "upstream_status": event.upstream_status,
            "duration_us": event.duration_us,
            "upstream_us": event.upstream_us,
            "request_size": len(request_body),
            "response_size": len(response_body),
            # Keyed: a plain hash of a small body could be reversed by guessing the USCC in it.
            "request_digest": suite.keyed_hash(index_key, request_body),
            "response_digest": suite.keyed_hash(index_key, response_body),
            "request_payload": (
                suite.seal(data_key.secret, kept_body, aad + b"/request", nonces.next()) if kept_body else None
            ),
            "response_payload": (
                suite.seal(data_key.secret, response_body, aad + b"/response", nonces.next())
                if response_body and event.store_response
                else None
            ),
            "suite": self.suite,
            "data_key_id": data_key.key_id,
        }
        for name, limit in LIMITED_COLUMNS:
            value = row[name]
            if value is not None and (len(value) > limit or "\x00" in value):
                row[name] = _clean(value, name)
        # Officer columns only when set: empty ones stay out of the canonical bytes, as for older records.
        if event.target_id is not None:
            row["target_id"] = _clean(event.target_id, "target_id")
        if event.reason is not None:
            row["reason"] = _clean(event.reason, "reason")
        if event.reason_category is not None:
            row["reason_category"] = _clean(event.reason_category, "reason_category")
        if event.reason_ref is not None:
            row["reason_ref"] = _clean(event.reason_ref, "reason_ref")
        return row

    async def append(self, event: AuditEvent) -> dict[str, Any]:
        """Return the committed row; raise AuditUnavailable if it could not be made durable."""
        if not self.running:
            raise AuditUnavailable("the audit writer is not running")
        try:
            row = self.build_row(event)
        except Exception as exc:  # no key, no record, no answer: fail closed
            self.last_error = type(exc).__name__
            log.error("audit record could not be sealed: %s", self.last_error)
            raise AuditUnavailable("the audit record could not be sealed") from None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        self._wakeup.set()
        return await future

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_seconds)
            self._tick_due = True
            self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._batch_max]
                del self._pending[: self._batch_max]
                await self._commit(batch)
            if self._tick_due:
                self._tick_due = False
                if self._checkpoint_due():
                    await self.checkpoint()
            if self._closing and not self._pending:
                if self._signer is not None and self.height > self.sealed_height:
                    await self.checkpoint()
                return

    def _checkpoint_due(self) -> bool:
        return (
            self._signer is not None
            and self.height > self.sealed_height
            and self._clock() - self.sealed_ms >= self._checkpoint_ms
        )

    async def _commit(self, batch: list[Pending]) -> None:
        try:
            if self._resync:
                await self._load_head()
                self._resync = False
            height, head = self.height, self.head
            hasher = self._hasher
            rows = []
            for row, _ in batch:
                height += 1
                row["height"] = height
                row["prev_hash"] = head
                head = hasher.hash_row(head, row)
                row["record_hash"] = head
                rows.append(row)
            for row in rows:  # every column present for the insert; empty optional ones were left out of the hash
                row.setdefault("target_id", None)
                row.setdefault("reason", None)
                row.setdefault("reason_category", None)
                row.setdefault("reason_ref", None)
            checkpoint = None
            if self._signer is not None and height - self.sealed_height >= self._checkpoint_every:
                checkpoint = sign_checkpoint(self._signer, self.chain_id, height, head, self._clock())
            await self._insert(rows, checkpoint)
        except Exception as exc:  # any store failure must reach every waiter, never a half-known state
            # The commit may have happened before the error reached us: read the head again before the next batch.
            self._resync = True
            self.last_error = type(exc).__name__
            if is_database_outage(exc):  # one warning when the store goes, one when it is back; counted between
                self.health.failed(exc)
            else:
                # The whole error, not just its class: "CommitterError" alone told an operator nothing.
                log.error("audit commit of %d records failed: %s", len(batch), describe_error(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(AuditUnavailable("the audit store could not commit the record"))
            return
        self.height, self.head = height, head
        self.last_error = None
        self.health.succeeded()
        self.batches += 1
        if checkpoint is not None:
            await self._sealed(checkpoint)
        for row, future in batch:
            if not future.done():
                future.set_result(row)

    async def _insert(self, rows: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        records = [ROW_VALUES(row) for row in rows]
        await self._committer.commit(records, _checkpoint_values(checkpoint) if checkpoint is not None else None)

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current (committed) head now, in a transaction of its own; None if there is nothing to sign."""
        if self._signer is None or self.height == 0:
            return None
        checkpoint = sign_checkpoint(self._signer, self.chain_id, self.height, self.head, self._clock())
        try:
            async with self._engine.begin() as connection:
                await connection.execute(insert(CHECKPOINT_TABLE).values(**checkpoint.to_dict()))
        except Exception as exc:  # a missed checkpoint is retried at the next tick; appends go on
            log.error("audit checkpoint at height %d failed: %s", self.height, type(exc).__name__)
            return None
        await self._sealed(checkpoint)
        return checkpoint

    async def _sealed(self, checkpoint: Checkpoint) -> None:
        self.sealed_height, self.sealed_ms = checkpoint.height, checkpoint.ts_ms
        if self._witness_path is not None:
            try:
                await asyncio.to_thread(append_witness, self._witness_path, checkpoint)
            except OSError as exc:
                log.error("cannot append checkpoint to %s: %s", self._witness_path, exc.strerror)


def _checkpoint_values(checkpoint: Checkpoint) -> tuple[Any, ...]:
    return (
        checkpoint.chain_id,
        checkpoint.height,
        checkpoint.head_hash,
        checkpoint.ts_ms,
        checkpoint.key_id,
        checkpoint.signature,
    )


# --- signing keys and trust ----------------------------------------------------------------------------------


def load_signer(settings: Settings, suite: str | None = None) -> PrivateKey:
    """This node's checkpoint signing key for `suite` (default: the configured one), made on first run (mode 0600),
    Ed25519 for `standard` and SM2 for `sm`; its public half is written beside it."""
    algorithm, key_file, public_file = SIGNING_FILES[suite or settings.crypto_suite]
    key = load_or_create_signing_key(settings.signing_keys_dir / key_file, algorithm)
    public_path = settings.signing_keys_dir / public_file
    pem = public_key_pem(key.public_key())
    if not public_path.exists() or public_path.read_text() != pem:
        write_secret_file(public_path, pem.encode())
        os.chmod(public_path, 0o644)  # a public key: readable by whoever verifies
    return key


def local_keys(settings: Settings | None, extra: list[Path] | tuple[Path, ...] = ()) -> list[PublicKey]:
    """Public keys the verifier holds itself: this node's own (of either suite) and its `serve --workers` workers',
    every PEM in keys/trusted/, any given on the command line. They owe nothing to the database."""
    keys = []
    if settings is not None:
        own_dirs = [settings.keys_dir, *sorted((settings.keys_dir / "workers").glob("*/"))]
        for directory in own_dirs:
            for algorithm, key_file, _ in SIGNING_FILES.values():
                own = directory / key_file
                if own.exists():
                    keys.append(load_or_create_signing_key(own, algorithm).public_key())
        directory = settings.trusted_keys_dir
        if directory.is_dir():
            for path in sorted(directory.glob("*.pem")):
                keys.append(_read_public_key(path))
    for path in extra:
        keys.append(_read_public_key(path))
    return keys


def trusted_keys(settings: Settings | None, extra: list[Path] | tuple[Path, ...] = ()) -> TrustedKeys:
    """The local keys alone (see `local_keys`): what archiving and an offline file check trust."""
    return TrustedKeys(local_keys(settings, extra))


async def node_trust(
    engine: AsyncEngine, settings: Settings | None, extra: list[Path] | tuple[Path, ...] = ()
) -> KeyTrust:
    """What `audit verify` trusts: the local keys, and every node key registered in the database, each by its
    standing (pinned, self-registered, revoked), so every node verifies every chain without copied key files."""
    from schemas.times import beijing_ms

    return build_trust(local_keys(settings, extra), await list_node_keys(engine), stamp=beijing_ms)


def _read_public_key(path: Path) -> PublicKey:
    try:
        return load_public_key(path.read_text())
    except OSError as exc:
        raise KeyFormatError(f"cannot read public key {path}: {exc.strerror}") from None
    except KeyFormatError as exc:
        raise KeyFormatError(f"{path}: {exc}") from None


def witness_path(settings: Settings, chain_id: str) -> Path:
    return settings.witness_dir / f"{chain_id}.checkpoints.jsonl"


def append_witness(path: Path, checkpoint: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as stream:
        stream.write(orjson.dumps(checkpoint.to_dict()) + b"\n")
        stream.flush()
        os.fsync(stream.fileno())


def read_witness(path: Path) -> list[Checkpoint]:
    """Checkpoints of the witness file; a torn last line (a crash mid-append) is skipped."""
    if not path.exists():
        return []
    checkpoints = []
    for line in path.read_bytes().splitlines():
        try:
            checkpoints.append(Checkpoint.from_dict(orjson.loads(line)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("skipping an unreadable line of %s", path)
    return checkpoints


# --- reading -------------------------------------------------------------------------------------------------


async def iter_chain(
    engine: AsyncEngine, chain_id: str, page: int = 5000, after: int = 0
) -> AsyncIterator[list[dict[str, Any]]]:
    """A chain's rows in height order, a page at a time, as dicts ready for the verifier (see `READ_COLUMNS`)."""
    columns = [AUDIT_TABLE.c[name] for name in READ_COLUMNS]
    while True:
        async with engine.connect() as connection:
            result = await connection.execute(
                select(*columns)
                .where(AUDIT_TABLE.c.chain_id == chain_id, AUDIT_TABLE.c.height > after)
                .order_by(AUDIT_TABLE.c.height)
                .limit(page)
            )
            rows = [drop_empty_optional(dict(zip(READ_COLUMNS, row, strict=True))) for row in result]
        if not rows:
            return
        yield rows
        after = rows[-1]["height"]


async def chain_ids(engine: AsyncEngine) -> list[str]:
    """Every chain the database knows of: by its records, its checkpoints or its archives."""
    async with engine.connect() as connection:
        found: set[str] = set()
        for table in (AUDIT_TABLE, CHECKPOINT_TABLE, ARCHIVE_TABLE):
            found.update(row[0] for row in await connection.execute(select(table.c.chain_id).distinct()))
    return sorted(found)


async def load_checkpoints(
    engine: AsyncEngine, chain_id: str, *, after: int = 0, limit: int | None = None
) -> list[Checkpoint]:
    query = (
        select(CHECKPOINT_TABLE)
        .where(CHECKPOINT_TABLE.c.chain_id == chain_id, CHECKPOINT_TABLE.c.height > after)
        .order_by(CHECKPOINT_TABLE.c.height)
    )
    if limit is not None:
        query = query.limit(limit)
    async with engine.connect() as connection:
        return [Checkpoint.from_dict(row._mapping) for row in await connection.execute(query)]


async def list_archives(engine: AsyncEngine, chain_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            select(ARCHIVE_TABLE).where(ARCHIVE_TABLE.c.chain_id == chain_id).order_by(ARCHIVE_TABLE.c.seq)
        )
        return [dict(row._mapping) for row in result]


async def fetch_row(engine: AsyncEngine, chain_id: str | None, column: str, value: Any) -> dict[str, Any] | None:
    """The first row (of `chain_id`, or of any chain) whose `column` equals `value`."""
    columns = [AUDIT_TABLE.c[name] for name in READ_COLUMNS]
    query = select(*columns).where(AUDIT_TABLE.c[column] == value)
    if chain_id is not None:
        query = query.where(AUDIT_TABLE.c.chain_id == chain_id)
    async with engine.connect() as connection:
        row = (await connection.execute(query.order_by(AUDIT_TABLE.c.height).limit(1))).first()
    return drop_empty_optional(dict(zip(READ_COLUMNS, row, strict=True))) if row is not None else None


async def get_record(engine: AsyncEngine, record_id: str) -> dict[str, Any] | None:
    async with engine.connect() as connection:
        row = (await connection.execute(select(AUDIT_TABLE).where(AUDIT_TABLE.c.record_id == record_id))).first()
    return dict(row._mapping) if row is not None else None


# --- verification --------------------------------------------------------------------------------------------


async def verify_all(
    engine: AsyncEngine,
    *,
    trusted: TrustedKeys | None = None,
    archive_dir: Path | None = None,
    witness_dir: Path | None = None,
    chains: list[str] | None = None,
    skip_archives: bool = False,
) -> list[ChainReport]:
    """Verify every chain (or `chains`): its archives, then its rows, against its checkpoints."""
    reports = []
    for chain_id in chains if chains is not None else await chain_ids(engine):
        witness = witness_dir / f"{chain_id}.checkpoints.jsonl" if witness_dir is not None else None
        reports.append(
            await verify_chain_db(
                engine,
                chain_id,
                trusted=trusted,
                archive_dir=archive_dir,
                witness=witness,
                skip_archives=skip_archives,
            )
        )
    return reports


async def verify_chain_db(
    engine: AsyncEngine,
    chain_id: str,
    *,
    trusted: TrustedKeys | None = None,
    archive_dir: Path | None = None,
    witness: Path | None = None,
    skip_archives: bool = False,
    page: int = 5000,
) -> ChainReport:
    checkpoints = await load_checkpoints(engine, chain_id)
    if witness is not None:
        checkpoints += read_witness(witness)
    if isinstance(trusted, KeyTrust):
        problem = _revocation_problem(trusted, chain_id, checkpoints)
        if problem is not None:
            return _fault_report(chain_id, problem[0], "rehashed", problem[1])
    archives = await list_archives(engine, chain_id)
    start_height, start_hash, sealed, archived_records, notes = 1, GENESIS_HASH, None, 0, []
    if archives:
        last = archives[-1]
        if skip_archives or archive_dir is None:
            anchor = [cp for cp in checkpoints if cp.height == last["to_height"]]
            problem = _anchor_problem(anchor, last, trusted)
            if problem is not None:
                return _fault_report(chain_id, last["to_height"] + 1, "rehashed", problem, len(archives))
            notes.append(
                f"heights 1–{last['to_height']} are in {len(archives)} archive(s), not verified here;"
                f" started from the signed checkpoint at height {last['to_height']}"
            )
        else:
            archive_report = verify_archives(chain_id, archives, archive_dir, trusted, checkpoints)
            if not archive_report.ok:
                return archive_report
            archived_records = archive_report.records
        start_height, start_hash, sealed = last["to_height"] + 1, last["head_hash"], last["to_height"]
    verifier = ChainVerifier(
        chain_id,
        start_height=start_height,
        start_hash=start_hash,
        checkpoints=checkpoints,
        trusted=trusted,
        sealed_height=sealed,
        presorted=True,
    )
    async for rows in iter_chain(engine, chain_id, page=page, after=start_height - 1):
        if not verifier.feed(rows):
            break
    found: dict[tuple[str, str], dict[str, Any] | None] = {}
    if verifier.failure is not None:
        for column, value in verifier.failure.lookups:
            row = await fetch_row(engine, chain_id, column, value)
            if row is None and column == PREV_FIELD and value != GENESIS_HASH:
                row = await fetch_row(engine, None, column, value)  # moved to another chain by a changed chain_id
            found[(column, value)] = row
    report = verifier.finish(lambda column, value: found.get((column, value)))
    return replace(
        report,
        records=report.records + archived_records,
        archives=len(archives),
        notes=tuple(notes),
        start_height=1 if archives and not notes else report.start_height,  # archives verified: from genesis
    )


def _revocation_problem(trust: KeyTrust, chain_id: str, checkpoints: list[Checkpoint]) -> tuple[int, str] | None:
    """A key revoked while it had signed up to height H keeps those checkpoints valid only while the one at H, which
    the revocation recorded, is still there: without it a thief of the key could rewrite everything below H."""
    for standing in trust.standings.values():
        if not standing.revoked or standing.chain_id != chain_id or not standing.revoked_height:
            continue
        height = standing.revoked_height
        if not any(cp.height == height and cp.key_id == standing.key_id for cp in checkpoints):
            return 1, (
                f"the checkpoint at height {height} signed by {standing.key_id}, recorded when that key was revoked"
                f" {standing.revoked}, is gone: heights 1–{height} are covered by no signature that can be trusted"
            )
    return None


def _anchor_problem(anchor: list[Checkpoint], archive: Mapping[str, Any], trusted: TrustedKeys | None) -> str | None:
    if not anchor:
        return f"no checkpoint signs the end of archive {archive['seq']} (height {archive['to_height']})"
    for checkpoint in anchor:
        why = trusted.check(checkpoint) if trusted is not None else None
        if why is not None:
            return f"the checkpoint ending archive {archive['seq']} cannot be trusted: {why}"
        if checkpoint.head_hash != archive["head_hash"]:
            return f"archive {archive['seq']} is registered with a head its signed checkpoint does not name"
    return None


def _fault_report(chain_id: str, height: int, kind: str, detail: str, archives: int = 0) -> ChainReport:
    fault = ChainFault(chain_id, height, kind, detail)
    return ChainReport(chain_id, 0, GENESIS_HASH, fault, head_height=height - 1, archives=archives)


def verify_archives(
    chain_id: str,
    archives: list[dict[str, Any]],
    archive_dir: Path,
    trusted: TrustedKeys | None,
    checkpoints: list[Checkpoint],
) -> ChainReport:
    """Each archive file: present, unchanged (its digest), linked to the one before, and a verifying chain segment."""
    prev_digest, prev_head, prev_to, total = "", GENESIS_HASH, 0, 0
    for archive in archives:
        path = archive_dir / chain_id / archive["file_name"]
        start = archive["from_height"]
        if start != prev_to + 1:
            return _fault_report(
                chain_id, prev_to + 1, "missing", f"no archive holds heights {prev_to + 1}–{start - 1}"
            )
        if not path.exists():
            return _fault_report(chain_id, start, "missing", f"archive file {path} is missing")
        digest = file_digest(path, digest_suite(archive["digest"]))
        if digest != archive["digest"]:
            return _fault_report(chain_id, start, "changed", f"archive file {path} differs from what was archived")
        try:
            header = scan(path).header
            reports = verify_file(path, trusted, start={chain_id: (start, prev_head)})
        except AuditFileError as exc:
            return _fault_report(chain_id, start, "changed", str(exc))
        if header.get("prev_archive_digest", "") != prev_digest:
            return _fault_report(chain_id, start, "changed", f"archive {path.name} does not link to the one before it")
        report = next((r for r in reports if r.chain_id == chain_id), None)
        if report is None:
            return _fault_report(chain_id, start, "missing", f"archive {path.name} holds no records of {chain_id}")
        if not report.ok:
            assert report.fault is not None
            detail = f"{report.fault.detail} (in archive {path.name})"
            return _fault_report(chain_id, report.fault.height, report.fault.kind, detail)
        if report.head_height != archive["to_height"] or report.sealed_height != archive["to_height"]:
            return _fault_report(
                chain_id,
                report.head_height + 1,
                "truncated",
                f"archive {path.name} should end at the signed height {archive['to_height']}",
            )
        prev_digest, prev_head, prev_to = digest, report.head_hash, archive["to_height"]
        total += report.records
    return ChainReport(chain_id, total, prev_head, None, head_height=prev_to, sealed_height=prev_to)


# --- search and payloads -------------------------------------------------------------------------------------


@dataclass
class AuditQuery:
    from_ms: int | None = None
    to_ms: int | None = None
    caller: str | None = None
    department: str | None = None
    service: str | None = None
    operation: str | None = None
    purpose: str | None = None
    decision: str | None = None
    event: str | None = None
    chain: str | None = None
    target: str | None = None
    category: str | None = None
    subject_hashes: list[str] = field(default_factory=list)


METADATA_COLUMNS = tuple(name for name in AUDIT_COLUMNS if name not in ("request_payload", "response_payload"))


async def search_records(
    engine: AsyncEngine, query: AuditQuery, *, after: tuple[int, str, int] | None, limit: int
) -> list[dict[str, Any]]:
    """Newest first by (time, chain, height): a keyset that stays stable while new records arrive."""
    table = AUDIT_TABLE
    columns = [table.c[name] for name in METADATA_COLUMNS]
    columns += [
        table.c.request_payload.is_not(None).label("has_request_payload"),
        table.c.response_payload.is_not(None).label("has_response_payload"),
    ]
    statement = select(*columns)
    equal = {
        "caller_id": query.caller,
        "department": query.department,
        "service": query.service,
        "operation": query.operation,
        "purpose": query.purpose,
        "decision": query.decision,
        "event": query.event,
        "chain_id": query.chain,
        "target_id": query.target,
        "reason_category": query.category,
    }
    for name, value in equal.items():
        if value is not None:
            statement = statement.where(table.c[name] == value)
    if query.from_ms is not None:
        statement = statement.where(table.c.ts_ms >= query.from_ms)
    if query.to_ms is not None:
        statement = statement.where(table.c.ts_ms < query.to_ms)
    if query.subject_hashes:
        statement = statement.where(table.c.subject_hash.in_(query.subject_hashes))
    if after is not None:
        statement = statement.where(tuple_(table.c.ts_ms, table.c.chain_id, table.c.height) < tuple_(*after))
    statement = statement.order_by(table.c.ts_ms.desc(), table.c.chain_id.desc(), table.c.height.desc()).limit(limit)
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in await connection.execute(statement)]


def subject_hashes(keyring: KeyRing, subject: str) -> list[str]:
    """The subject's keyed hash under every suite, so one search finds records of both."""
    return [get_suite(name).keyed_hash(keyring.index_key, subject) for name in SUITE_NAMES]


async def open_payload(keyring: KeyRing, row: Mapping[str, Any], part: str) -> bytes | None:
    """Decrypt the request or response payload of a record; PayloadShredded if its key was destroyed."""
    sealed = row.get(f"{part}_payload")
    if sealed is None:
        return None
    key = await keyring.get(str(row["data_key_id"]), fresh=True)
    if key.suite != row["suite"]:
        raise DecryptionError(f"record names suite {row['suite']}, but key {key.key_id} is {key.suite}")
    aad = f"{row['chain_id']}/{row['record_id']}/{part}".encode()
    return get_suite(key.suite).open(key.secret, bytes(sealed), aad)
