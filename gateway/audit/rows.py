"""Reading the audit tables: chains, their rows in height order, checkpoints, archives, one record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.models import AUDIT_COLUMNS, AuditArchive, AuditCheckpoint, AuditRecord
from security.audit_chain import HASH_FIELD, drop_empty_optional
from security.checkpoints import Checkpoint

AUDIT_TABLE = AuditRecord.__table__
CHECKPOINT_TABLE = AuditCheckpoint.__table__
ARCHIVE_TABLE = AuditArchive.__table__
# Rows as the verifier likes them: keys in sorted order (so the canonical JSON needs no sort), the hash last.
READ_COLUMNS = (*sorted(name for name in AUDIT_COLUMNS if name != HASH_FIELD), HASH_FIELD)


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
