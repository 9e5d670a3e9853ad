"""Searching audit records by metadata, and opening their sealed payloads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select, text, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.rows import AUDIT_TABLE
from gateway.storage.models import AUDIT_COLUMNS
from security.crypto import SUITE_NAMES, DecryptionError, get_suite
from security.keyring import KeyRing


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
    code: str | None = None
    subject_hashes: list[str] = field(default_factory=list)


METADATA_COLUMNS = tuple(name for name in AUDIT_COLUMNS if name not in ("request_payload", "response_payload"))


async def search_records(
    engine: AsyncEngine, query: AuditQuery, *, after: tuple[int, str, int] | None, limit: int
) -> list[dict[str, Any]]:
    """Newest first by (time, chain, height): a keyset that stays stable while new records arrive."""
    if len(query.subject_hashes) > 1:
        # One ordered, limited part per hash, then the newest of them: with `subject_hash IN (…)` the database cannot
        # walk the (subject_hash, ts_ms) index in time order, and reads every record of a subject queried a hundred
        # thousand times before it can sort them. Still one statement, one round trip.
        parts = union_all(*(select(_statement(query, one, after, limit).subquery()) for one in query.subject_hashes))
        merged = parts.subquery()
        statement = select(merged).order_by(*_newest_first(merged.c)).limit(limit)
    else:
        statement = _statement(query, query.subject_hashes[0] if query.subject_hashes else None, after, limit)
    async with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Planning this over every monthly partition (36 at three years) costs more than running it, each time
            # again for a custom plan; the generic plan prunes months at run time just as well. For this statement only.
            await connection.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        rows = [dict(row._mapping) for row in await connection.execute(statement)]
        await connection.rollback()  # nothing was written; ends the transaction the SET LOCAL belonged to
        return rows


def _statement(query: AuditQuery, subject_hash: str | None, after: tuple[int, str, int] | None, limit: int) -> Select:
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
        "reason_code": query.code,
        "subject_hash": subject_hash,
    }
    for name, value in equal.items():
        if value is not None:
            statement = statement.where(table.c[name] == value)
    if query.from_ms is not None:
        statement = statement.where(table.c.ts_ms >= query.from_ms)
    if query.to_ms is not None:
        statement = statement.where(table.c.ts_ms < query.to_ms)
    if after is not None:
        # The plain bound on ts_ms is implied by the keyset's, but unlike it an index and the partitions can use it:
        # a later page starts where the last ended instead of reading every newer record again.
        statement = statement.where(
            table.c.ts_ms <= after[0], tuple_(table.c.ts_ms, table.c.chain_id, table.c.height) < tuple_(*after)
        )
    return statement.order_by(*_newest_first(table.c)).limit(limit)


def _newest_first(columns: Any) -> tuple[Any, ...]:
    return columns.ts_ms.desc(), columns.chain_id.desc(), columns.height.desc()


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
