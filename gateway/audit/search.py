"""Searching audit records by metadata, and opening their sealed payloads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select, tuple_
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
        # One query per hash, merged here: with `subject_hash IN (…)` the database cannot walk the (subject_hash,
        # ts_ms) index in time order, and reads every record of a subject queried a hundred thousand times.
        pages = [
            await search_records(engine, replace(query, subject_hashes=[one]), after=after, limit=limit)
            for one in query.subject_hashes
        ]
        merged = sorted((row for page in pages for row in page), key=_position, reverse=True)
        return merged[:limit]
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
    }
    for name, value in equal.items():
        if value is not None:
            statement = statement.where(table.c[name] == value)
    if query.from_ms is not None:
        statement = statement.where(table.c.ts_ms >= query.from_ms)
    if query.to_ms is not None:
        statement = statement.where(table.c.ts_ms < query.to_ms)
    if query.subject_hashes:
        statement = statement.where(table.c.subject_hash == query.subject_hashes[0])
    if after is not None:
        # The plain bound on ts_ms is implied by the keyset's, but unlike it an index and the partitions can use it:
        # a later page starts where the last ended instead of reading every newer record again.
        statement = statement.where(
            table.c.ts_ms <= after[0], tuple_(table.c.ts_ms, table.c.chain_id, table.c.height) < tuple_(*after)
        )
    statement = statement.order_by(table.c.ts_ms.desc(), table.c.chain_id.desc(), table.c.height.desc()).limit(limit)
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in await connection.execute(statement)]


def _position(row: Mapping[str, Any]) -> tuple[int, str, int]:
    return row["ts_ms"], row["chain_id"], row["height"]


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
