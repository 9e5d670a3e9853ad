"""Callers and their keys: the writes behind both the admin API and the CLI, with their refusals (grants: grants.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.problems import Problem
from gateway.storage.models import Caller, CallerKey
from schemas.api import CallerIn, CallerOut, KeyIn, KeyOut
from schemas.problems import ProblemCode
from security.keys import KeyFormatError, load_public_key


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


async def add_caller(session: AsyncSession, body: CallerIn, clock: Clock = SYSTEM_CLOCK) -> CallerOut:
    if await session.get(Caller, body.caller_id) is not None:
        raise Problem(ProblemCode.CALLER_EXISTS, f"caller {body.caller_id!r} is registered")
    for key in body.keys:
        _check_key(key)
        if await session.get(CallerKey, key.key_id) is not None:
            raise Problem(ProblemCode.KEY_EXISTS, f"key id {key.key_id!r} is taken")
    now = clock.now()
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


async def existing_caller(session: AsyncSession, caller_id: str) -> Caller:
    """The caller, or 404 `caller_unknown`."""
    caller = await session.get(Caller, caller_id)
    if caller is None:
        raise Problem(ProblemCode.CALLER_UNKNOWN, f"no caller {caller_id!r}")
    return caller


async def add_key(session: AsyncSession, caller_id: str, key: KeyIn, clock: Clock = SYSTEM_CLOCK) -> KeyOut:
    await existing_caller(session, caller_id)
    _check_key(key)
    if await session.get(CallerKey, key.key_id) is not None:
        raise Problem(ProblemCode.KEY_EXISTS, f"key id {key.key_id!r} is taken")
    row = CallerKey(
        key_id=key.key_id,
        caller_id=caller_id,
        public_key=key.public_key,
        status="active",
        created_at=clock.now(),
    )
    session.add(row)
    await session.commit()
    return key_out(row)


async def revoke_key(session: AsyncSession, caller_id: str, key_id: str, clock: Clock = SYSTEM_CLOCK) -> KeyOut:
    row = await session.get(CallerKey, key_id)
    if row is None or row.caller_id != caller_id:
        raise Problem(
            ProblemCode.KEY_UNKNOWN, f"caller {caller_id!r} has no key {key_id!r}", status=404, title="Key not found"
        )
    if row.status != "revoked":
        row.status = "revoked"
        row.revoked_at = clock.now()
        await session.commit()
    return key_out(row)
