"""Sharing requests (共享需求): filing, the head's endorsement, the provider's decision, deadlines, grants, revocation.

Every transition writes a `SharingEvent` with its actor and the before/after value of each changed column,
in the same transaction as the change. The route that caused it returns the request with that history,
so the audit record (whose response payload is sealed) holds the before and after too. Concurrent
decisions on one request are caught by the row's version: the second one fails and changes nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from limits import parse as parse_rate
from pydantic import BaseModel
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from gateway.access.grants import delivery_state, new_grant, revoke_rows
from gateway.http.problems import Problem
from gateway.sharing.calendar import calendar_for, open_provisional
from gateway.sharing.errors import Faults, calendar_problem, forbidden, invalid, validate_collecting
from gateway.sharing.ownership import owner_of, published_by_owner, unowned
from gateway.sharing.request_states import (
    APPROVED,
    DECIDED,
    DELIVERY_WORKING_DAYS,
    DRAFT,
    EDITABLE,
    EXPIRED,
    GRANTED,
    LIVE,
    REFUSED,
    RETURNED,
    REVOKED,
    SUBMITTED,
    SYSTEM,
    Actor,
    effective_state,
    is_overdue,
)
from gateway.sharing.workdays import CHINA, Calendar, CalendarYearUnsupported, Count
from gateway.storage.models import Caller, CatalogItem, Grant, SharingEvent, SharingRequest
from schemas.problems import ProblemCode
from schemas.sharing import (
    DELIVERY_LABELS,
    LEGAL_BASIS_KIND_LABELS,
    SHARE_ATTRIBUTE_LABELS,
    STATE_LABELS,
    ApproveIn,
    DeliveryOut,
    EndorseIn,
    ExtendIn,
    GrantRef,
    PurposeOut,
    RefuseIn,
    ReturnIn,
    RevokeIn,
    SharingEventOut,
    SharingRequestIn,
    SharingRequestOut,
    SharingRequestPatch,
)
from schemas.times import china_date

CONDITIONAL_WORKING_DAYS = 10
UNCONDITIONAL_WORKING_DAYS = 1
MAX_EXTENSION_WORKING_DAYS = 10
DEFAULT_RATE_LIMIT = "20/second"
_SKIP = frozenset({"version", "updated_at"})


@dataclass
class Outcome:
    """A request after a transition, and the grants the transition issued or revoked (for the audit record)."""

    row: SharingRequest
    item: CatalogItem
    grants_changed: bool = False


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _snapshot(row: SharingRequest) -> dict[str, Any]:
    return {
        column.key: _jsonable(getattr(row, column.key))
        for column in SharingRequest.__table__.columns
        if column.key not in _SKIP
    }


def _transition(
    session: AsyncSession,
    row: SharingRequest,
    actor: Actor,
    action: str,
    to_state: str,
    now: datetime,
    before: dict[str, Any] | None,
    note: dict[str, Any] | None = None,
) -> SharingEvent:
    row.state = to_state
    row.updated_at = now
    after = _snapshot(row)
    earlier = before or {}
    changes = {
        name: {"before": earlier.get(name), "after": value}
        for name, value in after.items()
        if earlier.get(name) != value
    }
    event = SharingEvent(
        request_id=row.request_id,
        at=now,
        actor=actor.caller_id,
        actor_department=actor.department,
        action=action,
        from_state=earlier.get("state"),
        to_state=to_state,
        changes=changes,
        note=note,
    )
    session.add(event)
    return event


def response_days(share_attribute: str) -> int:
    """Working days the provider has to answer: 10 for 有条件, 1 for a 无条件 item the rule could not approve."""
    return UNCONDITIONAL_WORKING_DAYS if share_attribute == "unconditional" else CONDITIONAL_WORKING_DAYS


def deadline_of(
    calendar: Calendar, row: SharingRequest, extended_days: int | None, working_days: int = CONDITIONAL_WORKING_DAYS
) -> Count:
    """The provider's deadline by `calendar`: `working_days` after the submission day, then the extension's days.

    Counted from the start each time, so a recomputation after an import gives what the calendar says now.
    """
    assert row.submitted_at is not None
    count = calendar.add_working_days(china_date(row.submitted_at), working_days)
    if extended_days:
        count = count.then(calendar.add_working_days(count.due, extended_days))
    return count


def _set_deadline(row: SharingRequest, count: Count | None) -> None:
    row.due_date = count.due if count is not None else None
    row.deadline_provisional = count.provisional if count is not None else False
    row.deadline_source = count.source if count is not None else None


async def _commit(session: AsyncSession, code: ProblemCode = ProblemCode.STATE_CHANGED) -> None:
    try:
        await session.commit()
    except StaleDataError:
        await session.rollback()
        raise Problem(
            code, "another decision on this request was made first; nothing changed", title="Request changed meanwhile"
        ) from None


# --- reading -------------------------------------------------------------------------------------------------


def _can_see(actor: Actor, row: SharingRequest, now: datetime) -> bool:
    if actor.has("admin", "officer"):
        return True
    if actor.has("coordinator") and (row.escalated_at is not None or is_overdue(row, now)):
        return True
    return actor.has("department") and actor.department in (row.requester_department, row.provider_department)


async def _load(
    session: AsyncSession, actor: Actor, request_id: str, now: datetime, *, acting: bool = True
) -> tuple[SharingRequest, CatalogItem]:
    row = await session.get(SharingRequest, request_id)
    if row is None or (not acting and not _can_see(actor, row, now)):
        # Reading someone else's request: it does not exist as far as this caller can tell. Acting on it
        # goes on to the authority check, whose 403 names who may act instead.
        raise Problem(ProblemCode.REQUEST_UNKNOWN, f"no sharing request {request_id!r}")
    item = await session.get(CatalogItem, row.item_id)
    assert item is not None
    if acting and not actor.has("admin") and item.service is not None:
        # The provider named on the request is the service's owner (filing and every hand-over keep it so); a
        # request of a service nobody owns now must not be decided by whoever published its item.
        if await owner_of(session, item.service) != row.provider_department:
            raise unowned(item.service, "item_id")
    return row, item


async def request_out(
    session: AsyncSession,
    row: SharingRequest,
    item: CatalogItem,
    now: datetime,
    *,
    history: bool = True,
    grants: list[Grant] | None = None,
) -> SharingRequestOut:
    if grants is None:
        grants = list((await session.scalars(select(Grant).where(Grant.sharing_request_id == row.request_id))).all())
    events = None
    if history:
        rows = await session.scalars(
            select(SharingEvent).where(SharingEvent.request_id == row.request_id).order_by(SharingEvent.event_id)
        )
        events = [SharingEventOut.model_validate(event) for event in rows.all()]
    state = effective_state(row, now)
    return SharingRequestOut(
        request_id=row.request_id,
        item_id=item.item_id,
        item_code=item.code,
        item_name=item.name,
        share_attribute=item.share_attribute,
        requester_department=row.requester_department,
        provider_department=row.provider_department,
        filed_by=row.filed_by,
        endorsed_by=row.endorsed_by,
        callers=list(row.callers),
        fields=list(row.fields),
        purpose=PurposeOut(code=row.purpose_code, name=row.purpose_name),
        basis=row.basis,
        scenario=row.scenario,
        scope=row.scope,
        share_method=row.share_method,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        daily_volume=row.daily_volume,
        state=state,
        state_label=STATE_LABELS[state],
        submitted_at=row.submitted_at,
        due_date=row.due_date,
        deadline_provisional=bool(row.deadline_provisional),
        deadline_source=row.deadline_source,
        overdue=is_overdue(row, now),
        extended_days=row.extended_days,
        extension_reason=row.extension_reason,
        escalated_at=row.escalated_at,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        decision=row.decision,
        returned_items=row.returned_items,
        ended_at=row.ended_at,
        ended_by=row.ended_by,
        end_reason=row.end_reason,
        grants=[GrantRef.model_validate(grant) for grant in sorted(grants, key=lambda grant: grant.caller_id)],
        delivery=request_delivery(grants, now),
        created_at=row.created_at,
        updated_at=row.updated_at,
        history=events,
    )


def request_delivery(grants: list[Grant], now: datetime) -> DeliveryOut | None:
    """A request's delivery: delivered when every grant still in force is usable; overdue when one is late."""
    due = [grant for grant in grants if grant.delivery_due is not None]
    if not due:
        return None
    states = {delivery_state(grant, now) for grant in due} - {"cancelled"}
    if not states:
        state = "cancelled"
    else:
        state = "overdue" if "overdue" in states else "pending" if "pending" in states else "delivered"
    delivered = [grant.delivered_at for grant in due if grant.delivered_at is not None]
    return DeliveryOut(
        state=state,  # type: ignore[arg-type]
        state_label=DELIVERY_LABELS[state],
        due=min(grant.delivery_due for grant in due if grant.delivery_due is not None),
        provisional=any(grant.delivery_due_provisional for grant in due if grant.delivered_at is None),
        delivered_at=max(delivered) if state == "delivered" and delivered else None,
    )


async def outcome_out(session: AsyncSession, outcome: Outcome, now: datetime) -> SharingRequestOut:
    return await request_out(session, outcome.row, outcome.item, now)


async def get_request(session: AsyncSession, actor: Actor, request_id: str, now: datetime) -> SharingRequestOut:
    row, item = await _load(session, actor, request_id, now, acting=False)
    return await request_out(session, row, item, now)


async def list_requests(
    session: AsyncSession,
    actor: Actor,
    now: datetime,
    *,
    state: str | None = None,
    overdue: bool | None = None,
    escalated: bool | None = None,
    limit: int = 200,
) -> list[SharingRequestOut]:
    """What the caller may see, newest first: a department its own and those addressed to it, an officer or
    admin all, a coordinator the escalated and overdue ones."""
    query = select(SharingRequest).order_by(SharingRequest.created_at.desc(), SharingRequest.request_id)
    if not actor.has("admin", "officer"):
        visible = []
        if actor.has("department") and actor.department is not None:
            visible.append(SharingRequest.requester_department == actor.department)
            visible.append(SharingRequest.provider_department == actor.department)
        if actor.has("coordinator"):
            visible.append(SharingRequest.escalated_at.is_not(None))
            visible.append(and_(SharingRequest.state == SUBMITTED, SharingRequest.due_date < china_date(now)))
        if not visible:
            return []
        query = query.where(or_(*visible))
    rows = list((await session.scalars(query)).all())
    rows = [
        row
        for row in rows
        if (state is None or effective_state(row, now) == state)
        and (overdue is None or is_overdue(row, now) == overdue)
        and (escalated is None or (row.escalated_at is not None) == escalated)
    ][:limit]
    if not rows:
        return []
    ids = [row.request_id for row in rows]
    items = {
        item.item_id: item
        for item in (
            await session.scalars(select(CatalogItem).where(CatalogItem.item_id.in_({row.item_id for row in rows})))
        ).all()
    }
    grants: dict[str, list[Grant]] = {}
    for grant in (await session.scalars(select(Grant).where(Grant.sharing_request_id.in_(ids)))).all():
        grants.setdefault(grant.sharing_request_id or "", []).append(grant)
    return [
        await request_out(session, row, items[row.item_id], now, history=False, grants=grants.get(row.request_id, []))
        for row in rows
    ]


# --- filing --------------------------------------------------------------------------------------------------


async def _check_terms(
    session: AsyncSession,
    actor: Actor,
    item: CatalogItem | None,
    values: dict[str, Any],
    now: datetime,
    faults: Faults,
) -> None:
    """The request's content against its item, its department and the clock; every fault is collected.

    `values` may lack what was invalid on its own (already a fault): what is there is still checked.
    """
    if item is not None and item.share_attribute == "not_shared":
        basis = item.legal_basis or {}
        faults.add(
            "item_id",
            ProblemCode.ITEM_NOT_SHARED,
            f"{item.name} is 不予共享 under {basis.get('title', '?')} {basis.get('article', '')}".strip(),
        )
    if item is not None and values.get("fields") is not None:
        offered = [entry["name"] for entry in item.data_items]
        for index, name in enumerate(values["fields"]):
            if name not in offered:
                faults.add(
                    f"fields/{index}",
                    ProblemCode.FIELD_NOT_IN_ITEM,
                    f"{name!r} is not a data item of {item.code}: {offered}",
                )
    method = values.get("share_method")
    # "api+batch" asks for both: each method asked for must be one the item is shared by.
    if item is not None and method is not None and not set(method.split("+")) <= set(item.share_method.split("+")):
        faults.add(
            "share_method", ProblemCode.SHARE_METHOD_UNAVAILABLE, f"{item.code} is shared by {item.share_method} only"
        )
    valid_from, valid_to = values.get("valid_from"), values.get("valid_to")
    if valid_to is not None:
        if valid_to <= now:
            faults.add("valid_to", ProblemCode.VALIDITY_IN_PAST, "the 使用时限 would already have ended")
        elif valid_from is not None and valid_to <= valid_from:
            faults.add("valid_to", ProblemCode.VALIDITY_EMPTY, "valid_to must be after valid_from")
    for index, caller_id in enumerate(values.get("callers") or ()):
        caller = await session.get(Caller, caller_id)
        if caller is None:
            faults.add(f"callers/{index}", ProblemCode.CALLER_UNKNOWN, f"no caller {caller_id!r}")
        elif caller.department != actor.department:
            faults.add(
                f"callers/{index}",
                ProblemCode.CALLER_NOT_IN_DEPARTMENT,
                f"{caller_id!r} belongs to {caller.department!r}; a grant goes to the requesting department's callers",
            )


def _utc(value: datetime | None) -> datetime | None:
    # Stored datetimes are UTC: SQLite keeps the wall time it is given and drops the offset.
    return value.astimezone(UTC) if value is not None else None


def _values(body: SharingRequestIn | SharingRequestPatch | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        values = {key: value.model_dump() if isinstance(value, BaseModel) else value for key, value in body.items()}
    else:
        values = body.model_dump(exclude_unset=isinstance(body, SharingRequestPatch))
    for key in ("valid_from", "valid_to"):
        if values.get(key) is not None:
            values[key] = _utc(values[key])
    if values.get("fields") is not None:
        values["fields"] = list(dict.fromkeys(values["fields"]))
    if values.get("callers") is not None:
        values["callers"] = list(dict.fromkeys(values["callers"]))
    return values


def request_faults() -> Faults:
    return Faults("Sharing request is incomplete or invalid", ProblemCode.REQUEST_INCOMPLETE)


async def file_request(session: AsyncSession, actor: Actor, document: Any, now: datetime) -> Outcome:
    """File a draft. Every fault of the body, of form and of content, is named in one 422 (一次性告知)."""
    if not actor.has("department") or actor.department is None:
        raise forbidden(ProblemCode.ROLE_FORBIDDEN, "sharing requests are filed by a department's data officer")
    faults = request_faults()
    body, partial = validate_collecting(SharingRequestIn, document, faults)
    values = _values(body if body is not None else partial)
    item = None
    if values.get("item_id") is not None:
        item = await session.get(CatalogItem, values["item_id"])
        if item is None:
            faults.add("item_id", ProblemCode.ITEM_UNKNOWN, f"no catalog item {values['item_id']!r}")
    await _check_terms(session, actor, item, values, now, faults)
    faults.raise_if_any()
    assert body is not None and item is not None
    # Addressed to the department owning the data, whoever published the item.
    provider = item.provider
    if item.service is not None:
        provider = await owner_of(session, item.service) or ""
        if not provider:
            raise unowned(item.service, "item_id")
    row = SharingRequest(
        request_id="sr-" + secrets.token_hex(8),
        item_id=item.item_id,
        requester_department=actor.department,
        provider_department=provider,
        filed_by=actor.caller_id,
        callers=values["callers"],
        fields=values["fields"],
        purpose_code=body.purpose.code,
        purpose_name=body.purpose.name,
        basis=body.basis,
        scenario=body.scenario,
        scope=body.scope,
        share_method=body.share_method or item.share_method,
        valid_from=values["valid_from"],
        valid_to=values["valid_to"],
        daily_volume=body.daily_volume,
        state=DRAFT,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()  # the event refers to the row: insert it first
    _transition(session, row, actor, "file", DRAFT, now, None)
    await _commit(session)
    return Outcome(row, item)


def _require_requester(actor: Actor, row: SharingRequest) -> None:
    if not actor.in_department(row.requester_department):
        raise forbidden(ProblemCode.NOT_REQUESTER, f"only {row.requester_department} acts on its own request here")


def _require_state(row: SharingRequest, now: datetime, allowed: Iterable[str]) -> str:
    state = effective_state(row, now)
    allowed = frozenset(allowed)
    if state not in allowed:
        decided = state in DECIDED and SUBMITTED in allowed
        raise Problem(
            ProblemCode.ALREADY_DECIDED if decided else ProblemCode.INVALID_STATE,
            f"the request is {state} ({STATE_LABELS[state]}); this needs {' or '.join(sorted(allowed))}",
        )
    return state


async def update_request(session: AsyncSession, actor: Actor, request_id: str, document: Any, now: datetime) -> Outcome:
    row, item = await _load(session, actor, request_id, now)
    _require_requester(actor, row)
    _require_state(row, now, EDITABLE)
    faults = request_faults()
    patch, partial = validate_collecting(SharingRequestPatch, document, faults)
    changes = _values(patch if patch is not None else partial)
    if not changes and not faults:
        raise invalid("", ProblemCode.NOTHING_TO_CHANGE, "the body changes no field")
    current = {
        "fields": list(row.fields),
        "share_method": row.share_method,
        "valid_from": row.valid_from,
        "valid_to": row.valid_to,
        "callers": list(row.callers),
    }
    broken = faults.fields()
    merged = {
        key: (changes[key] if changes.get(key) is not None else value)
        for key, value in current.items()
        if key not in broken
    }
    await _check_terms(session, actor, item, merged, now, faults)
    faults.raise_if_any()
    before = _snapshot(row)
    for key in ("fields", "callers", "basis", "scenario", "scope", "share_method", "valid_from", "valid_to"):
        if key in changes and changes[key] is not None:
            setattr(row, key, changes[key])
    if changes.get("daily_volume") is not None:
        row.daily_volume = changes["daily_volume"]
    if changes.get("purpose") is not None:
        row.purpose_code = changes["purpose"]["code"]
        row.purpose_name = changes["purpose"]["name"]
    _transition(session, row, actor, "update", row.state, now, before)
    await _commit(session)
    return Outcome(row, item)


async def endorse(session: AsyncSession, actor: Actor, request_id: str, body: EndorseIn, now: datetime) -> Outcome:
    """本部门负责人审核: a second person of the requesting department submits the request.

    A 无条件 item its service's owner published is approved on submission, by rule; any other request gets its
    deadline: 10 working days for 有条件, 1 for a 无条件 item someone else published (the owner still decides).
    """
    row, item = await _load(session, actor, request_id, now)
    _require_requester(actor, row)
    if actor.caller_id == row.filed_by:
        raise forbidden(
            ProblemCode.ENDORSER_IS_FILER, "the head who endorses must be another person than the one who filed"
        )
    _require_state(row, now, EDITABLE)
    faults = request_faults()
    terms = {
        "fields": list(row.fields),
        "share_method": row.share_method,
        "valid_from": row.valid_from,
        "valid_to": row.valid_to,
        "callers": list(row.callers),
    }
    await _check_terms(session, actor, item, terms, now, faults)
    faults.raise_if_any()
    # The 无条件 rule stands in for the owner only on an item the owner itself published; any other request
    # waits for the owner's decision, within 1 working day for 无条件 and 10 for 有条件.
    by_rule = item.share_attribute == "unconditional" and published_by_owner(item, row.provider_department)
    count = None
    if not by_rule:
        # A year without a loaded schedule gives a provisional deadline, never a refusal: the request is accepted.
        calendar = await calendar_for(session)
        try:
            count = calendar.add_working_days(china_date(now), response_days(item.share_attribute))
        except CalendarYearUnsupported as exc:
            raise calendar_problem(exc) from None
    before = _snapshot(row)
    row.endorsed_by = actor.caller_id
    row.submitted_at = now
    row.decided_at = None
    row.decided_by = None
    row.decision = None
    _set_deadline(row, count)
    row.extended_days = None
    row.extension_reason = None
    row.escalated_at = None
    note = {"note": body.note} if body.note else None
    _transition(session, row, actor, "endorse", SUBMITTED, now, before, note)
    outcome = Outcome(row, item)
    if by_rule:
        _approve(
            session,
            outcome,
            SYSTEM,
            now,
            daily_quota=row.daily_volume,
            rate_limit=DEFAULT_RATE_LIMIT,
            valid_to=row.valid_to,
            delivery=await delivery_count(session, now),
            note={"rule": "无条件共享: approved on submission"},
        )
    await _commit(session)
    return outcome


# --- decisions -----------------------------------------------------------------------------------------------


def _require_decider(actor: Actor, row: SharingRequest, now: datetime) -> None:
    if actor.in_department(row.provider_department):
        return
    if actor.has("coordinator") and (row.escalated_at is not None or is_overdue(row, now)):
        return
    if actor.has("coordinator"):
        raise forbidden(ProblemCode.NOT_ESCALATED, "a coordinator decides only requests escalated past their deadline")
    raise forbidden(
        ProblemCode.NOT_PROVIDER,
        f"only the provider, {row.provider_department}, decides this request (or, once escalated, a coordinator)",
    )


async def delivery_count(session: AsyncSession, now: datetime) -> Count:
    """The delivery day of a grant approved now: the 20th working day after today (条例), by the calendar as
    loaded; provisional over a year without a schedule, recounted by the sweep once it is imported."""
    calendar = await calendar_for(session)
    try:
        return calendar.add_working_days(china_date(now), DELIVERY_WORKING_DAYS)
    except CalendarYearUnsupported as exc:
        raise calendar_problem(exc) from None


def _approve(
    session: AsyncSession,
    outcome: Outcome,
    actor: Actor,
    now: datetime,
    *,
    daily_quota: int,
    rate_limit: str,
    valid_to: datetime,
    delivery: Count,
    fields: list[str] | None = None,
    note: dict[str, Any] | None = None,
) -> None:
    """Approval creates the grants (one per caller the request names), effective from the requested start.

    A partial approval narrows the request itself to the approved fields and validity, so its history holds
    the before and after; the decision keeps what was requested. Each grant is due for delivery on
    `delivery`'s day (`delivery_count`), provisional when counted over a year without a loaded schedule.
    """
    row, item = outcome.row, outcome.item
    assert item.service is not None and item.operation is not None
    delivery_due = delivery.due
    before = _snapshot(row)
    requested = {"fields": list(row.fields), "valid_to": _jsonable(row.valid_to), "daily_volume": row.daily_volume}
    fields = fields if fields is not None else list(row.fields)
    start = row.valid_from if row.valid_from is not None and row.valid_from > now else now
    row.fields = fields
    row.valid_from = start
    row.valid_to = valid_to
    row.decided_at = now
    row.decided_by = actor.caller_id
    narrowed = {
        name: {"requested": requested[name], "approved": approved}
        for name, approved in (
            ("fields", fields),
            ("valid_to", _jsonable(valid_to)),
            ("daily_volume", daily_quota),
        )
        if (sorted(approved) != sorted(requested[name]) if name == "fields" else approved != requested[name])
    }
    row.decision = {
        "outcome": "approved",
        "partial": bool(narrowed),
        "daily_quota": daily_quota,
        "rate_limit": rate_limit,
        "delivery_due": delivery_due.isoformat(),
        **({"delivery_due_provisional": True} if delivery.provisional else {}),
        **({"narrowed": narrowed} if narrowed else {}),
        **(note or {}),
    }
    grants = [
        new_grant(
            caller_id=caller_id,
            department=row.requester_department,
            service=item.service,
            operation=item.operation,
            purpose=row.purpose_code,
            purpose_name=row.purpose_name,
            fields=sorted(row.fields),
            valid_from=start,
            valid_to=valid_to,
            daily_quota=daily_quota,
            rate_limit=rate_limit,
            sharing_request_id=row.request_id,
            share_methods=sorted(row.share_method.split("+")),
            created_at=now,
            delivery_due=delivery_due,
            delivery_due_provisional=delivery.provisional,
        )
        for caller_id in row.callers
    ]
    session.add_all(grants)
    grant_note = {"grant_ids": [grant.grant_id for grant in grants]}
    _transition(session, row, actor, "approve", APPROVED, now, before, {**(note or {}), **grant_note})
    if start <= now:
        _transition(session, row, actor, "grant", GRANTED, now, _snapshot(row), grant_note)
    outcome.grants_changed = True


async def approve(session: AsyncSession, actor: Actor, request_id: str, body: ApproveIn, now: datetime) -> Outcome:
    row, item = await _load(session, actor, request_id, now)
    _require_decider(actor, row, now)
    _require_state(row, now, {SUBMITTED})
    faults = Faults("Approval is invalid")
    rate_limit = body.rate_limit or DEFAULT_RATE_LIMIT
    try:
        parse_rate(rate_limit)
    except ValueError:
        faults.add("rate_limit", ProblemCode.RATE_LIMIT_INVALID, f"{rate_limit!r} is not a rate such as '20/second'")
    valid_to = _utc(body.valid_to) or row.valid_to
    if valid_to <= now:
        faults.add("valid_to", ProblemCode.VALIDITY_IN_PAST, "the grant would already have expired")
    elif valid_to > row.valid_to:
        faults.add("valid_to", ProblemCode.VALIDITY_BEYOND_REQUEST, "a grant ends no later than the 使用时限 requested")
    elif row.valid_from is not None and valid_to <= row.valid_from:
        faults.add("valid_to", ProblemCode.VALIDITY_EMPTY, "the grant would end before the requested start")
    fields = list(dict.fromkeys(body.fields)) if body.fields is not None else None
    for index, name in enumerate(fields or ()):
        if name not in row.fields:
            faults.add(
                f"fields/{index}",
                ProblemCode.FIELD_NOT_REQUESTED,
                f"a partial approval grants some of the requested fields {list(row.fields)}, not {name!r}",
            )
    if body.daily_quota is not None and body.daily_quota > row.daily_volume:
        faults.add(
            "daily_quota",
            ProblemCode.QUOTA_BEYOND_REQUEST,
            f"a daily quota is at most the {row.daily_volume} calls a day requested, not {body.daily_quota}",
        )
    faults.raise_if_any()
    outcome = Outcome(row, item)
    note: dict[str, Any] = {"note": body.note} if body.note else {}
    if actor.has("coordinator") and not actor.in_department(row.provider_department):
        note["escalation"] = "decided by a coordinator after the provider's deadline"
    _approve(
        session,
        outcome,
        actor,
        now,
        daily_quota=body.daily_quota or row.daily_volume,
        rate_limit=rate_limit,
        valid_to=valid_to,
        delivery=await delivery_count(session, now),
        fields=fields,
        note=note or None,
    )
    await _commit(session, ProblemCode.ALREADY_DECIDED)
    return outcome


async def refuse(session: AsyncSession, actor: Actor, request_id: str, body: RefuseIn, now: datetime) -> Outcome:
    row, item = await _load(session, actor, request_id, now)
    _require_decider(actor, row, now)
    _require_state(row, now, {SUBMITTED})
    faults = Faults("Refusal is invalid")
    if item.share_attribute != "not_shared" and body.condition_not_met is None and body.legal_basis is None:
        # 共享为常态: refusing a shareable item needs a ground, not only reasons.
        conditions = f" (its conditions: {item.conditions})" if item.conditions else ""
        faults.add(
            "legal_basis",
            ProblemCode.REFUSAL_GROUND_MISSING,
            f"{item.code} is {SHARE_ATTRIBUTE_LABELS[item.share_attribute]}: a refusal cites a legal basis (法律,"
            f" 行政法规 or 国务院决定) or names the 使用条件 not met{conditions}",
        )
    if body.condition_not_met is not None and item.share_attribute != "conditional":
        faults.add(
            "condition_not_met", ProblemCode.CONDITIONS_NOT_APPLICABLE, f"{item.code} has no 使用条件 to be unmet"
        )
    faults.raise_if_any()
    basis = body.legal_basis.model_dump() if body.legal_basis else None
    if basis is not None:
        basis["kind_label"] = LEGAL_BASIS_KIND_LABELS[basis["kind"]]
    before = _snapshot(row)
    row.decided_at = now
    row.decided_by = actor.caller_id
    row.decision = {
        "outcome": "refused",
        "reasons": body.reasons,
        "condition_not_met": body.condition_not_met.model_dump() if body.condition_not_met else None,
        "legal_basis": basis,
        "conditions": item.conditions,
    }
    _transition(session, row, actor, "refuse", REFUSED, now, before)
    await _commit(session, ProblemCode.ALREADY_DECIDED)
    return Outcome(row, item)


async def return_request(
    session: AsyncSession, actor: Actor, request_id: str, body: ReturnIn, now: datetime
) -> Outcome:
    """退回补正 with every missing item at once; a later return may only name items the first one named."""
    row, item = await _load(session, actor, request_id, now)
    _require_decider(actor, row, now)
    _require_state(row, now, {SUBMITTED})
    named = [missing.item for missing in body.missing]
    if row.returned_items is not None:
        new = [name for name in named if name not in row.returned_items]
        if new:
            raise invalid(
                "missing",
                ProblemCode.RETURN_NEW_ITEMS,
                f"一次性告知: the first return named {row.returned_items}; {new} should have been named then",
                "Return is invalid",
            )
    before = _snapshot(row)
    row.returned_items = row.returned_items if row.returned_items is not None else sorted(set(named))
    row.decision = {
        "outcome": "returned",
        "missing": [missing.model_dump() for missing in body.missing],
        "note": body.note,
    }
    row.decided_by = actor.caller_id
    row.decided_at = now
    _set_deadline(row, None)
    row.escalated_at = None
    _transition(session, row, actor, "return", RETURNED, now, before)
    await _commit(session, ProblemCode.ALREADY_DECIDED)
    return Outcome(row, item)


async def extend(session: AsyncSession, actor: Actor, request_id: str, body: ExtendIn, now: datetime) -> Outcome:
    """Once, by 1–10 working days, before the deadline passes, with a reason the requester sees."""
    row, item = await _load(session, actor, request_id, now)
    if not actor.in_department(row.provider_department):
        raise forbidden(ProblemCode.NOT_PROVIDER, f"only the provider, {row.provider_department}, extends its deadline")
    _require_state(row, now, {SUBMITTED})
    if item.share_attribute != "conditional" or row.due_date is None:
        raise invalid("", ProblemCode.EXTENSION_NOT_APPLICABLE, "only a 有条件共享 request has a deadline to extend")
    if row.extended_days is not None:
        raise invalid(
            "", ProblemCode.ALREADY_EXTENDED, f"the deadline was already extended once ({row.extended_days} days)"
        )
    if not 1 <= body.working_days <= MAX_EXTENSION_WORKING_DAYS:
        raise invalid(
            "working_days",
            ProblemCode.EXTENSION_TOO_LONG,
            f"an extension is 1 to {MAX_EXTENSION_WORKING_DAYS} working days, not {body.working_days}",
        )
    if is_overdue(row, now):
        raise invalid(
            "", ProblemCode.DEADLINE_PASSED, f"the deadline {row.due_date} has passed; it can no longer be extended"
        )
    calendar = await calendar_for(session)
    try:
        count = deadline_of(calendar, row, body.working_days)
    except CalendarYearUnsupported as exc:
        raise calendar_problem(exc) from None
    before = _snapshot(row)
    _set_deadline(row, count)
    row.extended_days = body.working_days
    row.extension_reason = body.reason
    note = {"reason": body.reason, "notice_to": row.requester_department}
    _transition(session, row, actor, "extend", SUBMITTED, now, before, note)
    await _commit(session)
    return Outcome(row, item)


# --- ending --------------------------------------------------------------------------------------------------


async def revoke(session: AsyncSession, actor: Actor, request_id: str, body: RevokeIn, now: datetime) -> Outcome:
    row, item = await _load(session, actor, request_id, now)
    parties = (row.provider_department, row.requester_department)
    if not (actor.has("admin") or any(actor.in_department(department) for department in parties)):
        raise forbidden(ProblemCode.NOT_PARTY, "a request is revoked by its provider, its requester or an admin")
    state = _require_state(row, now, LIVE)
    grants = (await session.scalars(select(Grant).where(Grant.sharing_request_id == row.request_id))).all()
    revoked = revoke_rows(grants, actor.caller_id, body.reason, now)
    before = _snapshot(row)
    before["state"] = state
    row.ended_at = now
    row.ended_by = actor.caller_id
    row.end_reason = body.reason
    _transition(session, row, actor, "revoke", REVOKED, now, before, {"grant_ids": revoked})
    await _commit(session)
    return Outcome(row, item, grants_changed=True)


async def revoke_grant(
    session: AsyncSession, actor: Actor, grant_id: str, reason: str | None, now: datetime
) -> tuple[Grant, Outcome | None]:
    """Revoke one grant; when it was its request's last live grant, the request is revoked with it."""
    grant = await session.get(Grant, grant_id)
    if grant is None:
        raise Problem(ProblemCode.GRANT_UNKNOWN, f"no grant {grant_id!r}")
    if grant.revoked_at is not None:
        return grant, None
    reason = reason or "revoked by an admin"
    revoke_rows([grant], actor.caller_id, reason, now)
    outcome = None
    if grant.sharing_request_id is not None:
        row = await session.get(SharingRequest, grant.sharing_request_id)
        assert row is not None
        others = (
            await session.scalars(
                select(Grant).where(
                    Grant.sharing_request_id == row.request_id,
                    Grant.grant_id != grant_id,
                    Grant.revoked_at.is_(None),
                )
            )
        ).all()
        state = effective_state(row, now)
        if not others and state in LIVE:
            item = await session.get(CatalogItem, row.item_id)
            assert item is not None
            before = _snapshot(row)
            before["state"] = state
            row.ended_at = now
            row.ended_by = actor.caller_id
            row.end_reason = reason
            _transition(session, row, actor, "revoke", REVOKED, now, before, {"grant_ids": [grant_id]})
            outcome = Outcome(row, item, grants_changed=True)
    await _commit(session)
    return grant, outcome


# --- what time alone changes ---------------------------------------------------------------------------------


async def due_transitions(session: AsyncSession, now: datetime) -> list[str]:
    """Ids of requests that time has moved on: overdue and not yet escalated, starting, or ending."""
    today = china_date(now)
    query = select(SharingRequest.request_id).where(
        or_(
            and_(
                SharingRequest.state == SUBMITTED,
                SharingRequest.due_date < today,
                SharingRequest.escalated_at.is_(None),
            ),
            and_(SharingRequest.state == APPROVED, SharingRequest.valid_from <= now),
            and_(SharingRequest.state.in_(LIVE), SharingRequest.valid_to <= now),
        )
    )
    return list((await session.scalars(query)).all())


async def apply_time(session: AsyncSession, request_id: str, now: datetime, overdue_action: str) -> Outcome | None:
    """Persist what time changed for one request, as the `system` actor; None when nothing (or another node) did."""
    row = await session.get(SharingRequest, request_id)
    if row is None:
        return None
    item = await session.get(CatalogItem, row.item_id)
    assert item is not None
    outcome = Outcome(row, item)
    state = effective_state(row, now)
    if state == EXPIRED and row.state != EXPIRED:
        _transition(session, row, SYSTEM, "expire", EXPIRED, now, _snapshot(row), {"valid_to": _jsonable(row.valid_to)})
    elif state == GRANTED and row.state == APPROVED:
        _transition(
            session, row, SYSTEM, "grant", GRANTED, now, _snapshot(row), {"valid_from": _jsonable(row.valid_from)}
        )
    elif is_overdue(row, now) and row.escalated_at is None:
        due = _jsonable(row.due_date)
        # Approval by default is the owner's silence: never for a request no current owner was asked.
        asked_owner = await owner_of(session, item.service) == row.provider_department
        if overdue_action == "approve" and row.valid_to > now and asked_owner:
            _approve(
                session,
                outcome,
                SYSTEM,
                now,
                daily_quota=row.daily_volume,
                rate_limit=DEFAULT_RATE_LIMIT,
                valid_to=row.valid_to,
                delivery=await delivery_count(session, now),
                note={"rule": f"overdue since {due}: approved by default (MSJX_SHARING_OVERDUE_ACTION=approve)"},
            )
        else:
            before = _snapshot(row)
            row.escalated_at = now
            note: dict[str, Any] = {"due_date": due, "escalated_to": "coordinator"}
            if row.deadline_provisional:
                note["deadline_provisional"] = True
            _transition(session, row, SYSTEM, "escalate", SUBMITTED, now, before, note)
    else:
        return None
    try:
        await session.commit()
    except StaleDataError:
        await session.rollback()
        return None
    return outcome


# --- provisional deadlines -----------------------------------------------------------------------------------


def _recounted(calendar: Calendar, row: SharingRequest, share_attribute: str) -> Count | None:
    """An open deadline counted again, when that moves its due day or settles it; else None.

    A firm deadline whose count only changes source (a year now imported that agrees with the library) is left
    as it is: its due day holds, and a history entry would say nothing.
    """
    if row.state != SUBMITTED or row.escalated_at is not None or row.submitted_at is None or row.due_date is None:
        return None
    try:
        count = deadline_of(calendar, row, row.extended_days, response_days(share_attribute))
    except CalendarYearUnsupported:
        return None
    if (count.due, count.provisional) == (row.due_date, bool(row.deadline_provisional)):
        return None
    return count


async def deadlines_to_recompute(session: AsyncSession, year: int | None = None) -> list[str]:
    """Open deadlines that the calendar as it is now counts otherwise (one query): the provisional ones, and,
    after an import of `year`, those whose count touched that year (a corrected schedule moves them too)."""
    calendar = await calendar_for(session)
    candidates = open_provisional()
    if year is not None:
        candidates = or_(
            candidates,
            and_(
                SharingRequest.state == SUBMITTED,
                SharingRequest.escalated_at.is_(None),
                SharingRequest.due_date >= date(year, 1, 1),
                SharingRequest.submitted_at < datetime(year + 1, 1, 1, tzinfo=CHINA).astimezone(UTC),
            ),
        )
    query = (
        select(SharingRequest, CatalogItem.share_attribute)
        .join(CatalogItem, CatalogItem.item_id == SharingRequest.item_id)
        .where(candidates)
    )
    rows = (await session.execute(query)).all()
    return [row.request_id for row, attribute in rows if _recounted(calendar, row, attribute) is not None]


async def recompute_deadline(
    session: AsyncSession, request_id: str, now: datetime, reason: dict[str, Any]
) -> tuple[Outcome, date] | None:
    """Count an open deadline again with the calendar as it is now, as the `system` actor.

    Returns the outcome and the due day before, or None when the deadline stays as it was (or another node
    recomputed it first). The history entry names the old and new due days and why (`reason`).
    """
    row = await session.get(SharingRequest, request_id)
    if row is None:
        return None
    calendar = await calendar_for(session)
    item = await session.get(CatalogItem, row.item_id)
    assert item is not None
    count = _recounted(calendar, row, item.share_attribute)
    if count is None:
        return None
    before = _snapshot(row)
    old_due = row.due_date
    _set_deadline(row, count)
    note = {
        **reason,
        "due_date_before": old_due.isoformat(),
        "due_date": count.due.isoformat(),
        "deadline_provisional": count.provisional,
        "calendar": calendar.describe(count.sources),
    }
    _transition(session, row, SYSTEM, "recompute_deadline", SUBMITTED, now, before, note)
    try:
        await session.commit()
    except StaleDataError:
        await session.rollback()
        return None
    return Outcome(row, item), old_due
