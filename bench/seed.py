"""State for the gateway scenarios: a throwaway PostgreSQL database, a seeded caller with a key and a grant, cleanup.

Seeding goes through `gateway.access.callers`, as the admin API and the CLI do (and as tests/helpers/gateways.py does).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.access import callers
from gateway.access import grants as grant_rows
from gateway.demo.setup import key_id_for
from gateway.runtime import build_adapters
from gateway.settings import Settings
from gateway.storage import db
from schemas.api import CallerIn, GrantIn, KeyIn
from security.keys import public_key_pem

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CALLER = "bench-platform"
PURPOSE = "BENCH-2025-001"
QUOTA_PER_DAY = 1_000_000_000
RATE_LIMIT = "1000000/second"
SERVICE, OPERATION = "credit", "dishonest-debtor"


@dataclass(frozen=True)
class BenchCaller:
    caller_id: str
    key_id: str
    private_key: Ed25519PrivateKey
    grant_id: str


async def seed(
    settings: Settings,
    service: str = SERVICE,
    operation: str = OPERATION,
    *,
    caller: str = CALLER,
    purpose: str = PURPOSE,
    also: Sequence[tuple[str, str]] = (),
    share_methods: Sequence[str] | None = None,
    rate_limit: str | None = RATE_LIMIT,
) -> BenchCaller:
    """Migrate, then register the bench caller with a fresh key and a grant for every field of the operation (and of
    each (service, operation) in `also`); `grant_id` is the first operation's."""
    await db.upgrade_async(settings)
    adapters = build_adapters(settings)
    key = Ed25519PrivateKey.generate()
    key_id = key_id_for(caller, key.public_key())
    engine = db.create_engine(settings)
    grant_ids = []
    try:
        async with db.sessionmaker(engine)() as session:
            await callers.add_caller(
                session,
                CallerIn(
                    caller_id=caller,
                    name=caller.replace("-", " "),
                    department="bench",
                    roles=["platform"],
                    keys=[KeyIn(key_id=key_id, public_key=public_key_pem(key.public_key()))],
                ),
            )
            for grant_service, grant_operation in ((service, operation), *also):
                extra: dict[str, Any] = {"share_methods": list(share_methods)} if share_methods else {}
                grant = await grant_rows.add_grant(
                    session,
                    GrantIn(
                        caller_id=caller,
                        service=grant_service,
                        operation=grant_operation,
                        purpose=purpose,
                        fields=list(adapters[grant_service].operations[grant_operation].fields),
                        valid_to=datetime.now(UTC) + timedelta(days=1),
                        # Far above any rate here, so never reached, but counted on every call: the full path.
                        daily_quota=QUOTA_PER_DAY,
                        rate_limit=rate_limit,
                        **extra,
                    ),
                    adapters,
                )
                grant_ids.append(grant.grant_id)
    finally:
        await engine.dispose()
    return BenchCaller(caller, key_id, key, grant_ids[0])


async def audit_counts(settings: Settings, caller_id: str) -> dict[str, int]:
    """How many audit records the caller's calls left, by decision (allowed, refused, failed)."""
    from sqlalchemy import func, select

    from gateway.storage.models import AuditRecord

    engine = db.create_engine(settings)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(AuditRecord.decision, func.count())
                .where(AuditRecord.caller_id == caller_id)
                .group_by(AuditRecord.decision)
            )
            return {str(decision): int(count) for decision, count in rows}
    finally:
        await engine.dispose()


async def audit_timings(settings: Settings, caller_id: str, since_ms: int, until_ms: int) -> dict[str, float]:
    """p50/p99 in ms of the gateway's own timings of the allowed calls recorded in a time window.

    `duration` runs from the request's arrival to just before its audit record is queued; `upstream` is the
    adapter's call inside it. What a client sees beyond `duration` is the audit commit and the HTTP hops.
    """
    from sqlalchemy import select

    from gateway.storage.models import AuditRecord

    engine = db.create_engine(settings)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(AuditRecord.duration_us, AuditRecord.upstream_us).where(
                        AuditRecord.caller_id == caller_id,
                        AuditRecord.decision == "allowed",
                        AuditRecord.ts_ms >= since_ms,
                        AuditRecord.ts_ms <= until_ms,
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    if not rows:
        return {}
    out: dict[str, float] = {"records": len(rows)}
    for name, values in (("duration", [r[0] for r in rows]), ("upstream", [r[1] or 0 for r in rows])):
        values.sort()
        out[f"{name}_p50_ms"] = round(values[len(values) // 2] / 1000, 3)
        out[f"{name}_p99_ms"] = round(values[min(len(values) - 1, int(len(values) * 0.99))] / 1000, 3)
    return out


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(_plain(url))._replace(path=f"/{name}"))


async def create_database() -> str:
    """CREATE DATABASE msjx_bench_<random> on the shared server; returns its URL."""
    import asyncpg

    name = f"msjx_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(_plain(DATABASE_URL), timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _with_database(DATABASE_URL, name)


async def drop_database(url: str) -> None:
    import asyncpg

    name = urlsplit(url).path.lstrip("/")
    if not name.startswith("msjx_bench_"):  # never drop anything this module did not create
        raise ValueError(f"refusing to drop {name!r}")
    admin = await asyncpg.connect(_plain(DATABASE_URL), timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def check_redis() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def forget_nonces(key_id: str, limit: int = 2_000_000) -> int:
    """Delete the nonces this run's key left in Redis (they would expire within ~10 min anyway); bounded."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    removed = 0
    try:
        batch: list[bytes] = []
        async for name in client.scan_iter(match=f"msjx:nonce:{key_id}:*", count=5000):
            batch.append(name)
            if len(batch) >= 5000:
                removed += await client.unlink(*batch)
                batch = []
            if removed >= limit:
                break
        if batch:
            removed += await client.unlink(*batch)
    finally:
        await client.aclose()
    return removed
