"""The 条例's duties after approval: delivery within 20 working days, suspension for misuse, the use register.

Delivery: a grant is *usable* once the provider says it is delivered (`deliver`, the only proof for batch or
file sharing, and what the provider answers for) or once a call under it succeeded (the gateway saw data flow,
which no statement can beat), whichever comes first; until then it is `pending`, and `overdue` for the provider
once the 20th working day after approval has ended. Suspension stops a grant without ending it; resumption
restarts it. The requesting department keeps a register of use, storage and destruction per grant, each entry
kept at least 3 years. Each change is a history entry of the request (when there is one) and an audit record.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gateway.access.grants import grant_status
from gateway.http.problems import Problem
from gateway.sharing.calendar import calendar_for
from gateway.sharing.errors import forbidden, invalid
from gateway.sharing.request_states import DELIVERY_WORKING_DAYS, LIVE, SYSTEM, Actor
from gateway.sharing.workdays import CalendarYearUnsupported
from gateway.sharing.workflow import Outcome, _commit, _jsonable, _load, _require_state, _snapshot, _transition
from gateway.storage.models import CatalogItem, DataUseEntry, Grant, SharingRequest
from schemas.problems import ProblemCode
from schemas.sharing import DATA_USE_KIND_LABELS, DataUseIn, DataUseOut, DataUseRegister, DeliverIn, ResumeIn, SuspendIn
from schemas.times import china_date

REGISTER_YEARS = 3
FIRST_USE = "first_use"


def keep_until(recorded: date) -> date:
    """The day until which an entry is kept: 3 years on (29 February kept until 1 March)."""
    try:
        return recorded.replace(year=recorded.year + REGISTER_YEARS)
    except ValueError:
        return recorded.replace(year=recorded.year + REGISTER_YEARS, month=3, day=1)


def _delivery_note(grants: list[Grant], now: datetime, **extra: object) -> dict[str, object]:
    due = min((grant.delivery_due for grant in grants if grant.delivery_due is not None), default=None)
    return {
        "grant_ids": [grant.grant_id for grant in grants],
        "due": _jsonable(due),
        "on_time": due is None or china_date(now) <= due,
        **extra,
    }


# --- delivery ------------------------------------------------------------------------------------------------


async def deliver(session: AsyncSession, actor: Actor, request_id: str, body: DeliverIn, now: datetime) -> Outcome:
    """The provider states that the approved data is delivered: every grant of the request not yet usable is."""
    row, item = await _load(session, actor, request_id, now)
    if not actor.in_department(row.provider_department):
        raise forbidden(
            ProblemCode.NOT_PROVIDER, f"only the provider, {row.provider_department}, delivers this request"
        )
    _require_state(row, now, LIVE)
    grants = (await session.scalars(select(Grant).where(Grant.sharing_request_id == row.request_id))).all()
    pending = [grant for grant in grants if grant.revoked_at is None and grant.delivered_at is None]
    if not pending:
        raise invalid(
            "", ProblemCode.ALREADY_DELIVERED, "every grant of this request is delivered (or revoked) already"
        )
    for grant in pending:
        grant.delivered_at = now
        grant.delivered_by = actor.caller_id
        grant.delivery_note = body.note
    note = _delivery_note(pending, now, via="provider", note=body.note)
    _transition(session, row, actor, "deliver", row.state, now, _snapshot(row), note)
    await _commit(session)
    return Outcome(row, item, grants_changed=True)


async def record_first_use(session: AsyncSession, grant_id: str, now: datetime) -> Outcome | None:
    """The first successful call under a grant delivers it (actor `system`); None if delivered already."""
    grant = await session.get(Grant, grant_id)
    if grant is None or grant.delivered_at is not None or grant.sharing_request_id is None:
        return None
    row = await session.get(SharingRequest, grant.sharing_request_id)
    assert row is not None
    item = await session.get(CatalogItem, row.item_id)
    assert item is not None
    grant.delivered_at = now
    grant.delivered_by = FIRST_USE
    grant.delivery_note = "first successful call under the grant"
    note = _delivery_note([grant], now, via=FIRST_USE)
    _transition(session, row, SYSTEM, "deliver", row.state, now, _snapshot(row), note)
    # StaleDataError when another node recorded it, or a decision changed the request meanwhile: the caller
    # tries again with a fresh session, and finds it delivered or records it then.
    await session.commit()
    return Outcome(row, item, grants_changed=True)


async def overdue_deliveries(session: AsyncSession, now: datetime) -> list[str]:
    """Requests with a grant past its delivery day, undelivered and still in force, not yet recorded as such."""
    query = (
        select(Grant.sharing_request_id)
        .where(
            Grant.delivery_due < china_date(now),
            Grant.delivered_at.is_(None),
            Grant.delivery_overdue_at.is_(None),
            Grant.revoked_at.is_(None),
            Grant.valid_to > now,
        )
        .distinct()
    )
    return [request_id for request_id in (await session.scalars(query)).all() if request_id is not None]


async def record_overdue_delivery(session: AsyncSession, request_id: str, now: datetime) -> Outcome | None:
    """The sweep's record that the provider missed the delivery day (actor `system`), once per grant."""
    row = await session.get(SharingRequest, request_id)
    if row is None:
        return None
    grants = (
        await session.scalars(
            select(Grant).where(
                Grant.sharing_request_id == request_id,
                Grant.delivery_due < china_date(now),
                Grant.delivered_at.is_(None),
                Grant.delivery_overdue_at.is_(None),
                Grant.revoked_at.is_(None),
                Grant.valid_to > now,
            )
        )
    ).all()
    if not grants:
        return None
    item = await session.get(CatalogItem, row.item_id)
    assert item is not None
    for grant in grants:
        grant.delivery_overdue_at = now
    note = _delivery_note(list(grants), now, notice_to=row.provider_department)
    _transition(session, row, SYSTEM, "delivery_overdue", row.state, now, _snapshot(row), note)
    await session.commit()  # StaleDataError: another node did it; the sweep moves on
    return Outcome(row, item)


async def delivery_dues_to_recompute(session: AsyncSession) -> list[str]:
    """Grants whose provisional delivery day the calendar as it is now (after an import) would count otherwise."""
    calendar = await calendar_for(session)
    rows = (
        await session.scalars(
            select(Grant).where(
                Grant.delivery_due_provisional.is_(True), Grant.delivered_at.is_(None), Grant.revoked_at.is_(None)
            )
        )
    ).all()
    stale = []
    for grant in rows:
        try:
            count = calendar.add_working_days(china_date(grant.created_at), DELIVERY_WORKING_DAYS)
        except CalendarYearUnsupported:
            continue
        if (count.due, count.provisional) != (grant.delivery_due, True):
            stale.append(grant.grant_id)
    return stale


async def recompute_delivery_due(session: AsyncSession, grant_id: str, now: datetime) -> Outcome | None:
    """Count a provisional delivery day again from the approval day, as the `system` actor; None if unchanged."""
    grant = await session.get(Grant, grant_id)
    if grant is None or not grant.delivery_due_provisional or grant.delivered_at is not None:
        return None
    calendar = await calendar_for(session)
    count = calendar.add_working_days(china_date(grant.created_at), DELIVERY_WORKING_DAYS)
    if (count.due, count.provisional) == (grant.delivery_due, True) or grant.sharing_request_id is None:
        return None
    row = await session.get(SharingRequest, grant.sharing_request_id)
    assert row is not None
    item = await session.get(CatalogItem, row.item_id)
    assert item is not None
    note = {
        "rule": "the calendar changed since this delivery day was counted",
        "grant_id": grant.grant_id,
        "delivery_due_before": _jsonable(grant.delivery_due),
        "delivery_due": count.due.isoformat(),
        "delivery_due_provisional": count.provisional,
        "calendar": calendar.describe(count.sources),
    }
    grant.delivery_due = count.due
    grant.delivery_due_provisional = count.provisional
    if grant.delivery_overdue_at is not None and china_date(now) <= count.due:
        grant.delivery_overdue_at = None  # not late after all: recorded again if the new day passes
    _transition(session, row, SYSTEM, "recompute_delivery_due", row.state, now, _snapshot(row), note)
    await session.commit()  # StaleDataError: the request changed meanwhile; the next sweep looks again
    return Outcome(row, item)


# --- suspension ----------------------------------------------------------------------------------------------


async def _grant_with_request(
    session: AsyncSession, actor: Actor, grant_id: str
) -> tuple[Grant, SharingRequest | None, CatalogItem | None]:
    """The grant, its request and item; only its provider department or an admin acts on it."""
    grant = await session.get(Grant, grant_id)
    if grant is None:
        raise Problem(ProblemCode.GRANT_UNKNOWN, f"no grant {grant_id!r}")
    row = await session.get(SharingRequest, grant.sharing_request_id) if grant.sharing_request_id else None
    if not actor.has("admin") and not (row is not None and actor.in_department(row.provider_department)):
        who = f"its provider, {row.provider_department}," if row is not None else "an admin (it was issued directly)"
        raise forbidden(ProblemCode.NOT_PROVIDER, f"a grant is suspended or resumed by {who} or an admin")
    item = await session.get(CatalogItem, row.item_id) if row is not None else None
    return grant, row, item


def _require_in_force(grant: Grant, now: datetime) -> str:
    status = grant_status(grant, now)
    if status in ("revoked", "expired"):
        raise invalid(
            "", ProblemCode.INVALID_STATE, f"the grant is {status}; only a grant still in force is suspended or resumed"
        )
    return status


async def suspend(
    session: AsyncSession, actor: Actor, grant_id: str, body: SuspendIn, now: datetime
) -> tuple[Grant, Outcome | None]:
    """Stop a grant for misuse (暂停): every call is refused with `grant_suspended` until it is resumed."""
    grant, row, item = await _grant_with_request(session, actor, grant_id)
    if _require_in_force(grant, now) == "suspended":
        raise invalid(
            "",
            ProblemCode.ALREADY_SUSPENDED,
            f"suspended since {grant.suspended_at.isoformat()}: {grant.suspend_reason}",
        )
    grant.suspended_at = now
    grant.suspended_by = actor.caller_id
    grant.suspend_reason = body.reason
    outcome = None
    if row is not None and item is not None:
        note = {"grant_id": grant.grant_id, "reason": body.reason}
        _transition(session, row, actor, "suspend", row.state, now, _snapshot(row), note)
        outcome = Outcome(row, item, grants_changed=True)
    await _commit(session)
    return grant, outcome


async def resume(
    session: AsyncSession, actor: Actor, grant_id: str, body: ResumeIn, now: datetime
) -> tuple[Grant, Outcome | None]:
    """End a suspension; the history keeps when, by whom and why it was suspended."""
    grant, row, item = await _grant_with_request(session, actor, grant_id)
    if _require_in_force(grant, now) != "suspended":
        raise invalid("", ProblemCode.NOT_SUSPENDED, f"the grant {grant.grant_id} is not suspended")
    note = {
        "grant_id": grant.grant_id,
        "suspended_at": _jsonable(grant.suspended_at),
        "suspended_by": grant.suspended_by,
        "suspend_reason": grant.suspend_reason,
        "reason": body.reason,
    }
    grant.suspended_at = None
    grant.suspended_by = None
    grant.suspend_reason = None
    outcome = None
    if row is not None and item is not None:
        _transition(session, row, actor, "resume", row.state, now, _snapshot(row), note)
        outcome = Outcome(row, item, grants_changed=True)
    await _commit(session)
    return grant, outcome


# --- the register of use, storage and destruction -------------------------------------------------------------


def entry_out(entry: DataUseEntry) -> DataUseOut:
    return DataUseOut(
        entry_id=entry.entry_id,
        grant_id=entry.grant_id,
        sharing_request_id=entry.sharing_request_id,
        department=entry.department,
        kind=entry.kind,
        kind_label=DATA_USE_KIND_LABELS[entry.kind],
        occurred_at=entry.occurred_at,
        description=entry.description,
        location=entry.location,
        volume=entry.volume,
        recorded_by=entry.recorded_by,
        recorded_at=entry.recorded_at,
        keep_until=entry.keep_until,
    )


async def _visible_grant(session: AsyncSession, actor: Actor, grant_id: str) -> Grant:
    grant = await session.get(Grant, grant_id)
    if grant is not None and not actor.has("admin", "officer") and not actor.in_department(grant.department):
        row = await session.get(SharingRequest, grant.sharing_request_id) if grant.sharing_request_id else None
        if row is None or not actor.in_department(row.provider_department):
            grant = None
    if grant is None:
        raise Problem(ProblemCode.GRANT_UNKNOWN, f"no grant {grant_id!r}")
    return grant


async def add_entry(session: AsyncSession, actor: Actor, grant_id: str, body: DataUseIn, now: datetime) -> DataUseOut:
    """The holding department records what it did with data received under the grant."""
    grant = await _visible_grant(session, actor, grant_id)
    if not actor.in_department(grant.department):
        raise forbidden(
            ProblemCode.NOT_HOLDER,
            f"the register of this grant is kept by the department holding it, {grant.department}",
        )
    occurred = body.occurred_at if body.occurred_at is not None else now
    if occurred > now + timedelta(minutes=5):
        raise invalid(
            "occurred_at", ProblemCode.OCCURRED_IN_FUTURE, "an entry records what happened, not what is planned"
        )
    if occurred < grant.created_at:
        raise invalid(
            "occurred_at", ProblemCode.OCCURRED_BEFORE_GRANT, "no data was received under the grant before it existed"
        )
    entry = DataUseEntry(
        entry_id="du-" + secrets.token_hex(8),
        grant_id=grant.grant_id,
        sharing_request_id=grant.sharing_request_id,
        department=grant.department,
        kind=body.kind,
        occurred_at=occurred,
        description=body.description,
        location=body.location,
        volume=body.volume,
        recorded_by=actor.caller_id,
        recorded_at=now,
        keep_until=keep_until(china_date(now)),
    )
    session.add(entry)
    await session.commit()
    return entry_out(entry)


async def read_register(session: AsyncSession, actor: Actor, grant_id: str) -> DataUseRegister:
    """The holder, the provider, officers and admins read a grant's register, oldest first."""
    grant = await _visible_grant(session, actor, grant_id)
    entries = (
        await session.scalars(
            select(DataUseEntry)
            .where(DataUseEntry.grant_id == grant.grant_id)
            .order_by(DataUseEntry.occurred_at, DataUseEntry.recorded_at, DataUseEntry.entry_id)
        )
    ).all()
    state = "destroyed" if entries and entries[-1].kind == "destruction" else "open"
    return DataUseRegister(
        grant_id=grant.grant_id,
        department=grant.department,
        state=state,  # type: ignore[arg-type]
        entries=[entry_out(entry) for entry in entries],
    )


async def register_entries(engine: AsyncEngine, from_ms: int, to_ms: int) -> list[DataUseOut]:
    """Entries recorded in [from, to), oldest first: what `audit export` adds to its file."""
    start, end = (datetime.fromtimestamp(ms / 1000, UTC) for ms in (from_ms, to_ms))
    async with AsyncSession(engine) as session:
        rows = (
            await session.scalars(
                select(DataUseEntry)
                .where(DataUseEntry.recorded_at >= start, DataUseEntry.recorded_at < end)
                .order_by(DataUseEntry.recorded_at, DataUseEntry.entry_id)
            )
        ).all()
    return [entry_out(row) for row in rows]
