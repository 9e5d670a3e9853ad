"""Callers, keys and grants: the writes behind both the admin API and the CLI, with their refusals."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime

from limits import parse as parse_rate
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.base import Adapter
from gateway.clock import SYSTEM_CLOCK
from gateway.http.problems import Problem
from gateway.sharing.grant_state import delivery_state, grant_status
from gateway.storage.models import Caller, CallerKey, Grant, SharingRequest
from schemas.api import CallerIn, CallerOut, GrantIn, GrantOut, KeyIn, KeyOut
from schemas.problems import ProblemCode
from security.keys import KeyFormatError, load_public_key

# What the grants.daily_quota column holds (a 32-bit INTEGER on PostgreSQL); a larger number failed the insert.
MAX_DAILY_QUOTA = 2**31 - 1


def _check_key(key: KeyIn) -> None:
    try:
        load_public_key(key.public_key)
    except KeyFormatError as exc:
        raise Problem(
            ProblemCode.KEY_INVALID,
            str(exc),
            errors=[{"field": "public_key", "message": str(exc), "type": ProblemCode.KEY_INVALID}],
        ) from None


def key_out(row: CallerKey) -> KeyOut:
    return KeyOut.model_validate(row)


async def caller_out(session: AsyncSession, caller: Caller) -> CallerOut:
    keys = (await session.scalars(select(CallerKey).where(CallerKey.caller_id == caller.caller_id))).all()
    return CallerOut(
        caller_id=caller.caller_id,
        name=caller.name,
        department=caller.department,
        roles=list(caller.roles),
        created_at=caller.created_at,
        keys=[key_out(key) for key in sorted(keys, key=lambda k: k.key_id)],
    )


async def add_caller(session: AsyncSession, body: CallerIn) -> CallerOut:
    if await session.get(Caller, body.caller_id) is not None:
        raise Problem(ProblemCode.CALLER_EXISTS, f"caller {body.caller_id!r} is registered")
    for key in body.keys:
        _check_key(key)
        if await session.get(CallerKey, key.key_id) is not None:
            raise Problem(ProblemCode.KEY_EXISTS, f"key id {key.key_id!r} is taken")
    now = SYSTEM_CLOCK.now()
    caller = Caller(
        caller_id=body.caller_id,
        name=body.name,
        department=body.department,
        roles=sorted(set(body.roles)),
        created_at=now,
    )
    session.add(caller)
    await session.flush()
    for key in body.keys:
        session.add(
            CallerKey(
                key_id=key.key_id, caller_id=body.caller_id, public_key=key.public_key, status="active", created_at=now
            )
        )
    await session.commit()
    return await caller_out(session, caller)


async def list_callers(session: AsyncSession) -> list[CallerOut]:
    callers = (await session.scalars(select(Caller).order_by(Caller.caller_id))).all()
    return [await caller_out(session, caller) for caller in callers]


async def session_has_caller(session: AsyncSession, caller_id: str) -> bool:
    return await session.get(Caller, caller_id) is not None


async def _caller(session: AsyncSession, caller_id: str) -> Caller:
    caller = await session.get(Caller, caller_id)
    if caller is None:
        raise Problem(ProblemCode.CALLER_UNKNOWN, f"no caller {caller_id!r}")
    return caller


async def add_key(session: AsyncSession, caller_id: str, key: KeyIn) -> KeyOut:
    await _caller(session, caller_id)
    _check_key(key)
    if await session.get(CallerKey, key.key_id) is not None:
        raise Problem(ProblemCode.KEY_EXISTS, f"key id {key.key_id!r} is taken")
    row = CallerKey(
        key_id=key.key_id,
        caller_id=caller_id,
        public_key=key.public_key,
        status="active",
        created_at=SYSTEM_CLOCK.now(),
    )
    session.add(row)
    await session.commit()
    return key_out(row)


async def revoke_key(session: AsyncSession, caller_id: str, key_id: str) -> KeyOut:
    row = await session.get(CallerKey, key_id)
    if row is None or row.caller_id != caller_id:
        raise Problem(
            ProblemCode.KEY_UNKNOWN, f"caller {caller_id!r} has no key {key_id!r}", status=404, title="Key not found"
        )
    if row.status != "revoked":
        row.status = "revoked"
        row.revoked_at = SYSTEM_CLOCK.now()
        await session.commit()
    return key_out(row)


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


async def add_grant(session: AsyncSession, body: GrantIn, adapters: Mapping[str, Adapter]) -> GrantOut:
    caller = await _caller(session, body.caller_id)
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
    now = SYSTEM_CLOCK.now()
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
    row = Grant(
        grant_id="g-" + secrets.token_hex(8),
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
    return grant_out(row)


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


async def revoke_grant(
    session: AsyncSession, grant_id: str, *, actor_id: str = "operator", reason: str | None = None
) -> GrantOut:
    """Revoke a grant; the last live grant of a sharing request takes the request with it (see sharing.workflow)."""
    from gateway.sharing.request_states import Actor
    from gateway.sharing.workflow import revoke_grant as revoke

    grant, _ = await revoke(session, Actor(actor_id, None, frozenset({"admin"})), grant_id, reason, SYSTEM_CLOCK.now())
    return grant_out(grant)
