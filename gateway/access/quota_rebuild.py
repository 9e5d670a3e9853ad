"""Today's quota windows rebuilt from the audit records: counters in memory (or in a Redis that lost its data)
start from zero after a restart, but every call that spent quota has its durable audit record."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.quotas import Quotas
from gateway.storage.models import AuditRecord, Grant
from schemas.times import china_date, end_of

AUDIT_TABLE = AuditRecord.__table__
log = logging.getLogger("msjx.quotas")
# Calls that spend quota: through /v1 and through the SOAP façade (gateway/soap/); a batch counts each subject.
INVOKE_EVENTS = ("service.invoke", "soap.invoke", "batch.subject")


async def spent_today(engine: AsyncEngine, now: datetime, before: float) -> dict[str, tuple[int, int]]:
    """Calls that spent quota today (Beijing time) before the time `before`, by quota scope, with its daily quota.

    A call spent quota when the quota check let it through: it was answered (`allowed`), or it reached its upstream
    and failed there (it has an upstream time). Refusals before the check, and by it, spent nothing.
    """
    day_start = end_of(china_date(now)) - timedelta(days=1)
    records = AUDIT_TABLE.c
    spent = (
        select(records.grant_id, func.count())
        .where(
            records.ts_ms >= int(day_start.timestamp() * 1000),
            records.ts_ms < int(before * 1000),
            records.event.in_(INVOKE_EVENTS),
            records.grant_id.is_not(None),
            or_(records.decision == "allowed", records.upstream_us.is_not(None)),
        )
        .group_by(records.grant_id)
    )
    async with engine.connect() as connection:
        counts = dict((await connection.execute(spent)).all())
        if not counts:
            return {}
        grants = (
            await connection.execute(
                select(Grant.grant_id, Grant.sharing_request_id, Grant.daily_quota).where(Grant.grant_id.in_(counts))
            )
        ).all()
    by_scope: dict[str, int] = defaultdict(int)
    quota: dict[str, int] = {}
    for grant_id, request_id, daily_quota in grants:
        scope = request_id or grant_id
        by_scope[scope] += counts[grant_id]
        if daily_quota is not None:
            quota[scope] = daily_quota
    return {scope: (quota[scope], count) for scope, count in by_scope.items() if scope in quota}


async def rebuild_quota_windows(engine: AsyncEngine, quotas: Quotas, now: datetime | None = None) -> int:
    """Give today's counters back the calls their store forgot: those audited before it started (the process, or
    the Redis server). Returns the number of windows restored."""
    moment = now or quotas.clock.now()
    await quotas.connect()
    started, run = quotas.store_started
    lost = await spent_today(engine, moment, before=started)
    day = china_date(moment)
    for scope, (daily_quota, count) in lost.items():
        await quotas.restore(scope, daily_quota, count, day, run)
    if lost:
        log.info("quota windows of %d grants rebuilt from today's audit records (%s)", len(lost), quotas.kind)
    return len(lost)
