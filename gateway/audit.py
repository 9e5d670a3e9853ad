"""The audit writer: seals payloads, chains records per node and commits them in groups before any answer leaves.

Every caller of `append` waits until its record is durable. Concurrent appends share one transaction
(group commit), so durability costs one commit per batch rather than one per request. If the commit
fails, every waiter gets `AuditUnavailable` and the gateway answers 503: no data leaves unlogged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.models import AUDIT_COLUMNS, AuditRecord
from security.audit_chain import GENESIS_HASH, ChainReport, record_hash, verify_chain
from security.crypto import DataKey, digest, keyed_hash, seal

log = logging.getLogger("msjx.audit")
AUDIT_TABLE = AuditRecord.__table__


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
    extra: Mapping[str, Any] = field(default_factory=dict)


def new_request_id() -> str:
    return secrets.token_hex(16)


class AuditWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        chain_id: str,
        data_key: DataKey,
        subject_key: bytes,
        batch_max: int = 512,
    ) -> None:
        self._engine = engine
        self.chain_id = chain_id
        self._data_key = data_key
        self._subject_key = subject_key
        self._batch_max = batch_max
        self._queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.height = 0
        self.head = GENESIS_HASH
        self.last_error: str | None = None

    async def start(self) -> None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(AuditRecord.height, AuditRecord.record_hash)
                    .where(AuditRecord.chain_id == self.chain_id)
                    .order_by(AuditRecord.height.desc())
                    .limit(1)
                )
            ).first()
        if row is not None:
            self.height, self.head = int(row[0]), str(row[1])
        self._task = asyncio.create_task(self._run(), name=f"audit-writer-{self.chain_id}")

    async def close(self) -> None:
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subject_hash(self, subject: str) -> str:
        return keyed_hash(self._subject_key, subject)

    def build_row(self, event: AuditEvent) -> dict[str, Any]:
        """Every column but height and hashes, which only the writer task may assign, in order."""
        record_id = secrets.token_hex(16)
        aad = f"{self.chain_id}/{record_id}".encode()
        return {
            "chain_id": self.chain_id,
            "record_id": record_id,
            "ts_ms": int(time.time() * 1000),
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
            "subject_hash": self.subject_hash(event.subject) if event.subject else None,
            "decision": event.decision,
            "reason_code": event.reason_code,
            "fields": ",".join(event.fields) or None,
            "status_code": event.status_code,
            "upstream_status": event.upstream_status,
            "duration_us": event.duration_us,
            "upstream_us": event.upstream_us,
            "request_size": len(event.request_body),
            "response_size": len(event.response_body),
            "request_digest": digest(event.request_body),
            "response_digest": digest(event.response_body),
            "request_payload": seal(self._data_key, event.request_body, aad + b"/request")
            if event.request_body
            else None,
            "response_payload": (
                seal(self._data_key, event.response_body, aad + b"/response") if event.response_body else None
            ),
            "suite": self._data_key.suite,
            "data_key_id": self._data_key.key_id,
        }

    async def append(self, event: AuditEvent) -> dict[str, Any]:
        """Return the committed row; raise AuditUnavailable if it could not be made durable."""
        if not self.running:
            raise AuditUnavailable("the audit writer is not running")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put((self.build_row(event), future))
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        height, head = self.height, self.head
        rows = []
        for row, _ in batch:
            height += 1
            row["height"] = height
            row["prev_hash"] = head
            head = record_hash(head, row)
            row["record_hash"] = head
            rows.append(row)
        try:
            async with self._engine.begin() as connection:
                await connection.execute(insert(AUDIT_TABLE), rows)
        except Exception as exc:  # any store failure must reach every waiter, never a half-known state
            self.last_error = type(exc).__name__
            log.error("audit commit of %d records failed: %s", len(rows), self.last_error)
            for _, future in batch:
                if not future.done():
                    future.set_exception(AuditUnavailable("the audit store could not commit the record"))
            return
        self.height, self.head = height, head
        self.last_error = None
        for row, future in batch:
            if not future.done():
                future.set_result(row)


async def iter_chain(engine: AsyncEngine, chain_id: str, page: int = 5000) -> AsyncIterator[dict[str, Any]]:
    """Stream a chain's rows in height order, a page at a time, as plain dicts of every column."""
    after = 0
    columns = [AUDIT_TABLE.c[name] for name in AUDIT_COLUMNS]
    while True:
        async with engine.connect() as connection:
            result = await connection.execute(
                select(*columns)
                .where(AUDIT_TABLE.c.chain_id == chain_id, AUDIT_TABLE.c.height > after)
                .order_by(AUDIT_TABLE.c.height)
                .limit(page)
            )
            rows = [dict(row._mapping) for row in result]
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1]["height"]


async def chain_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        result = await connection.execute(select(AUDIT_TABLE.c.chain_id).distinct().order_by(AUDIT_TABLE.c.chain_id))
        return [row[0] for row in result]


async def verify_all(engine: AsyncEngine) -> list[ChainReport]:
    reports = []
    for chain_id in await chain_ids(engine):
        rows = [row async for row in iter_chain(engine, chain_id)]
        reports.append(verify_chain(chain_id, rows))
    return reports
