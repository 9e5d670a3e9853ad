"""Grants: which one allows a call (or the refusal that says why none does), and every write to them.

Issued by an admin (`add_grant`) or by the approval of a sharing request (`new_grant`), revoked one by one or with
their request (`revoke_rows`); read per request from the directory's snapshot, counted by quotas.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime

from limits import parse as parse_rate
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.base import Adapter
from gateway.access.callers import existing_caller
from gateway.access.directory import Directory, GrantInfo
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.problems import Problem
from gateway.storage.models import Grant, SharingRequest
from schemas.api import GrantIn, GrantOut
from schemas.problems import ProblemCode
from schemas.times import china_date

# What the grants.daily_quota column holds (a 32-bit INTEGER on PostgreSQL); a larger number failed the insert.
MAX_DAILY_QUOTA = 2**31 - 1


# --- which grant allows a call -------------------------------------------------------------------------------


async def grant_for(
    directory: Directory, caller_id: str, service: str, operation: str, purpose: str, method: str = "api"
) -> GrantInfo:
    """The grant that allows the caller this call now by this share method, from the directory's snapshot; else a
    403 that says why."""
    grants = await directory.grants_for(caller_id, service, operation)
    now = directory.clock.now()
    try:
        return select_grant(grants, service, operation, purpose, now, method=method)
    except Problem as refusal:
        # Only a refused call looks further (a try costs nothing when no exception is raised).
        raise await explain_refusal(directory, refusal, caller_id, service, operation, purpose, now) from None


def select_grant(
    grants: tuple[GrantInfo, ...],
    service: str,
    operation: str,
    purpose: str,
    now: datetime,
    *,
    method: str = "api",
) -> GrantInfo:
    """The grant that allows this call now by this share method (`api`, or `batch` for a batch job), or the most
    specific refusal."""
    if not grants:
        raise Problem(ProblemCode.NO_GRANT, f"the caller holds no grant for {service}/{operation}")
    for_purpose = [grant for grant in grants if grant.purpose == purpose]
    if not for_purpose:
        raise Problem(ProblemCode.PURPOSE_NOT_GRANTED, f"no grant for {service}/{operation} with purpose {purpose!r}")
    by_method = [grant for grant in for_purpose if method in grant.share_methods]
    if not by_method:
        raise Problem(
            ProblemCode.SHARE_METHOD_NOT_GRANTED,
            f"the grant for {service}/{operation} with purpose {purpose!r} does not allow share method {method!r}"
            f" (共享方式 {'批量交换' if method == 'batch' else '服务接口'})",
            context={"grant_id": for_purpose[0].grant_id},
        )
    for_purpose = by_method
    for grant in for_purpose:
        if grant.valid_at(now):
            return grant
    if all(grant.valid_to <= now for grant in for_purpose):
        # Ended since the snapshot was taken (it is at most 1 s old).
        raise ended_problem(ProblemCode.GRANT_EXPIRED, for_purpose[0].grant_id, purpose, for_purpose[0].valid_to)
    raise Problem(
        ProblemCode.GRANT_NOT_VALID,
        f"the grant for purpose {purpose!r} is not valid at {now.isoformat(timespec='seconds')}",
        context={"grant_id": for_purpose[0].grant_id},
    )


ENDED = {
    ProblemCode.GRANT_REVOKED: "was revoked",
    ProblemCode.GRANT_SUSPENDED: "was suspended",
    ProblemCode.GRANT_EXPIRED: "expired",
}


def ended_problem(
    code: ProblemCode, grant_id: str, purpose: str, since: datetime, reason: str | None = None
) -> Problem:
    """403 for a grant the caller had for this purpose that may not be used now; the refusal names the grant."""
    detail = f"the grant {grant_id} for purpose {purpose!r} {ENDED[code]} at {since.isoformat(timespec='seconds')}"
    if code is ProblemCode.GRANT_SUSPENDED:
        detail += f" and is refused until resumed: {reason}"
    return Problem(code, detail, context={"grant_id": grant_id})


async def explain_refusal(
    directory: Directory, refusal: Problem, caller_id: str, service: str, operation: str, purpose: str, now: datetime
) -> Problem:
    """The refusal that says what happened, for a call no grant in the snapshot allowed.

    The snapshot holds only grants that may answer, so a granted call never comes here. A `no_grant` or
    `purpose_not_granted` looks for a suspended, revoked or expired grant of the caller for that purpose in the
    database; when there is one, the refusal names it.
    """
    if refusal.code not in (ProblemCode.NO_GRANT, ProblemCode.PURPOSE_NOT_GRANTED):
        return refusal
    ended = await directory.ended_grant(caller_id, service, operation, purpose, now)
    if ended is None:
        return refusal
    code, row = ended
    since = {ProblemCode.GRANT_REVOKED: row.revoked_at, ProblemCode.GRANT_SUSPENDED: row.suspended_at}.get(
        code
    ) or row.valid_to
    return ended_problem(code, row.grant_id, purpose, since, row.suspend_reason)


# --- what a grant is now ------------------------------------------------------------------------------------


def grant_status(row: Grant, now: datetime) -> str:
    """active, suspended, revoked, expired or not_started, from its row."""
    if row.revoked_at is not None:
        return "revoked"
    if row.valid_to <= now:
        return "expired"
    if row.suspended_at is not None:
        return "suspended"
    if row.valid_from > now:
        return "not_started"
    return "active"


def delivery_state(row: Grant, now: datetime) -> str:
    """`overdue` once the due day (Beijing time) has ended with the grant still not usable; a grant revoked or
    expired before delivery is `cancelled`; a grant an admin issued directly has no such obligation."""
    if row.delivery_due is None:
        return "not_applicable"
    if row.delivered_at is not None:
        return "delivered"
    if row.revoked_at is not None or row.valid_to <= now:
        return "cancelled"
    return "overdue" if china_date(now) > row.delivery_due else "pending"


# --- writes --------------------------------------------------------------------------------------------------


def new_grant(
    *,
    caller_id: str,
    department: str,
    service: str,
    operation: str,
    purpose: str,
    purpose_name: str | None,
    fields: Iterable[str],
    valid_from: datetime,
    valid_to: datetime,
    daily_quota: int | None,
    rate_limit: str | None,
    created_at: datetime,
    share_methods: list[str],
    sharing_request_id: str | None = None,
    delivery_due: date | None = None,
    delivery_due_provisional: bool = False,
) -> Grant:
    """A new grant row with its own id, for the caller to add to its session."""
    return Grant(
        grant_id="g-" + secrets.token_hex(8),
        caller_id=caller_id,
        department=department,
        service=service,
        operation=operation,
        purpose=purpose,
        purpose_name=purpose_name,
        fields=list(fields),
        valid_from=valid_from,
        valid_to=valid_to,
        daily_quota=daily_quota,
        rate_limit=rate_limit,
        share_methods=share_methods,
        sharing_request_id=sharing_request_id,
        created_at=created_at,
        delivery_due=delivery_due,
        delivery_due_provisional=delivery_due_provisional,
    )


async def revoke_service_grants(session: AsyncSession, service: str, now: datetime) -> int:
    """Revoke every live grant on a service that is going away (the caller commits); how many there were."""
    result = await session.execute(
        update(Grant).where(Grant.service == service, Grant.revoked_at.is_(None)).values(revoked_at=now)
    )
    return int(result.rowcount or 0)


def revoke_rows(grants: Iterable[Grant], actor_id: str, reason: str, now: datetime) -> list[str]:
    """Revoke the grants not revoked yet (the caller commits); the ids of those this revoked."""
    revoked = []
    for grant in grants:
        if grant.revoked_at is None:
            grant.revoked_at = now
            grant.revoked_by = actor_id
            grant.revoke_reason = reason
            revoked.append(grant.grant_id)
    return revoked


def grant_out(row: Grant, now: datetime | None = None) -> GrantOut:
    now = now or SYSTEM_CLOCK.now()
    # The row's columns by name; what depends on the time is worked out here.
    return GrantOut.model_validate(row).model_copy(
        update={"status": grant_status(row, now), "delivery_state": delivery_state(row, now)}
    )


def _grant_problem(field: str, code: ProblemCode, message: str) -> Problem:
    return Problem(
        code,
        f"{field}: {message}",
        status=422,
        title="Grant is invalid",
        errors=[{"field": field, "message": message, "type": code}],
    )


async def add_grant(
    session: AsyncSession, body: GrantIn, adapters: Mapping[str, Adapter], clock: Clock = SYSTEM_CLOCK
) -> GrantOut:
    caller = await existing_caller(session, body.caller_id)
    adapter = adapters.get(body.service)
    if adapter is None:
        raise _grant_problem(
            "service", ProblemCode.UNKNOWN_SERVICE, f"no service {body.service!r}; known: {sorted(adapters)}"
        )
    operation = adapter.operations.get(body.operation)
    if operation is None:
        known = sorted(adapter.operations)
        raise _grant_problem(
            "operation",
            ProblemCode.UNKNOWN_OPERATION,
            f"{body.service} has no operation {body.operation!r}; known: {known}",
        )
    unknown = [name for name in body.fields if name not in operation.fields]
    if unknown:
        raise _grant_problem(
            "fields", ProblemCode.UNKNOWN_FIELD, f"{unknown} are not fields of {body.service}/{body.operation}"
        )
    now = clock.now()
    # Stored as UTC: SQLite keeps the wall time it is given and drops the offset.
    valid_from = body.valid_from.astimezone(UTC) if body.valid_from else now
    valid_to = body.valid_to.astimezone(UTC)
    if valid_to <= now:
        raise _grant_problem("valid_to", ProblemCode.VALIDITY_IN_PAST, "the grant would already have expired")
    if valid_to <= valid_from:
        raise _grant_problem("valid_to", ProblemCode.VALIDITY_EMPTY, "valid_to must be after valid_from")
    if body.department is not None and body.department != caller.department:
        raise _grant_problem(
            "department", ProblemCode.DEPARTMENT_MISMATCH, f"{body.caller_id!r} belongs to {caller.department!r}"
        )
    if body.daily_quota is not None and not 0 < body.daily_quota <= MAX_DAILY_QUOTA:
        raise _grant_problem(
            "daily_quota",
            ProblemCode.QUOTA_INVALID,
            f"a daily quota is from 1 to {MAX_DAILY_QUOTA}, not {body.daily_quota}",
        )
    if body.rate_limit is not None:
        try:
            parse_rate(body.rate_limit)
        except ValueError:
            raise _grant_problem(
                "rate_limit", ProblemCode.RATE_LIMIT_INVALID, f"{body.rate_limit!r} is not a rate such as '20/second'"
            ) from None
    row = new_grant(
        caller_id=body.caller_id,
        department=caller.department,
        service=body.service,
        operation=body.operation,
        purpose=body.purpose,
        purpose_name=body.purpose_name,
        fields=sorted(set(body.fields)),
        valid_from=valid_from,
        valid_to=valid_to,
        daily_quota=body.daily_quota,
        rate_limit=body.rate_limit,
        share_methods=sorted(set(body.share_methods)),
        created_at=now,
    )
    session.add(row)
    await session.commit()
    return grant_out(row, now)


async def list_grants(
    session: AsyncSession, caller_id: str | None = None, now: datetime | None = None
) -> list[GrantOut]:
    query = select(Grant).order_by(Grant.created_at, Grant.grant_id)
    if caller_id is not None:
        query = query.where(Grant.caller_id == caller_id)
    return [grant_out(row, now) for row in (await session.scalars(query)).all()]


async def grants_for_department(session: AsyncSession, department: str, now: datetime | None = None) -> list[GrantOut]:
    """Grants a department holds, and grants on the items it provides."""
    provided = select(SharingRequest.request_id).where(SharingRequest.provider_department == department)
    query = (
        select(Grant)
        .where(or_(Grant.department == department, Grant.sharing_request_id.in_(provided)))
        .order_by(Grant.created_at, Grant.grant_id)
    )
    return [grant_out(row, now) for row in (await session.scalars(query)).all()]
