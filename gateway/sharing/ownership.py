"""Who owns each upstream service's data (提供单位), and the one rule built on it: only the owner publishes and decides.

A catalog item over a service is registered or changed by the service's owner department, or by an admin who
names that department and is audited as acting for it. Requests for such an item are decided by the owner;
the 无条件 rule approves on submission only an item the owner itself published.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.base import Adapter
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.problems import Problem
from gateway.sharing.errors import forbidden
from gateway.sharing.request_states import DRAFT, LIVE, RETURNED, SUBMITTED, Actor
from gateway.storage.models import CatalogItem, ServiceOwner, SharingEvent, SharingRequest
from schemas.problems import ProblemCode

log = logging.getLogger("msjx.sharing")

# Requests that still need or hold their provider: they follow the service when it changes hands.
OPEN = frozenset({DRAFT, RETURNED, SUBMITTED, *LIVE})


@dataclass(frozen=True)
class Publisher:
    """Who an item is published as (its 提供单位), and whether an admin acted for that department."""

    provider: str
    acting_admin: str | None = None

    @property
    def audit_reason(self) -> str | None:
        if self.acting_admin is None:
            return None
        return f"admin {self.acting_admin} acting for department {self.provider}"


def _refused(code: ProblemCode, field: str, message: str) -> Problem:
    if code.status == 403:
        return forbidden(code, message, field)
    errors = [{"field": field, "message": message, "type": code}]
    return Problem(code, f"{field}: {message}", errors=errors)


async def owner_of(session: AsyncSession, service: str | None) -> str | None:
    if service is None:
        return None
    row = await session.get(ServiceOwner, service)
    return row.department if row is not None else None


async def owners(session: AsyncSession) -> dict[str, str]:
    rows = await session.execute(select(ServiceOwner.service, ServiceOwner.department))
    return {service: department for service, department in rows}


def unowned(service: str, field: str = "service") -> Problem:
    return _refused(
        ProblemCode.SERVICE_UNOWNED,
        field,
        f"no department owns {service!r} yet: an admin names its owner first (msjx-gateway upstreams owner)",
    )


async def publisher(session: AsyncSession, actor: Actor, service: str | None, provider: str | None) -> Publisher:
    """The department an item over `service` is published as, or the 403/409 saying who may publish it.

    `provider` is the department the body names: a department may only name itself, an admin must name the
    department it acts for. An item no service delivers (不予共享 without delivery) belongs to its publisher.
    """
    if actor.has("admin"):
        if provider is None:
            raise Problem(
                ProblemCode.PROVIDER_MISSING,
                "provider: an admin registers on behalf of a department and must name it",
                errors=[
                    {"field": "provider", "message": "required for an admin", "type": ProblemCode.PROVIDER_MISSING}
                ],
            )
        acting = Publisher(provider, actor.caller_id)
    else:
        if actor.department is None or not actor.has("department"):
            raise Problem(ProblemCode.ROLE_FORBIDDEN, "catalog items are a department's")
        if provider is not None and provider != actor.department:
            raise _refused(
                ProblemCode.NOT_OWN_DEPARTMENT,
                "provider",
                f"a department registers its own items: you are {actor.department!r}, not {provider!r}",
            )
        acting = Publisher(actor.department)
    if service is None:
        return acting
    owner = await owner_of(session, service)
    if owner is None:
        raise unowned(service)
    if owner != acting.provider:
        field = "provider" if acting.acting_admin else "service"
        raise _refused(
            ProblemCode.NOT_SERVICE_OWNER,
            field,
            f"{service!r} belongs to {owner}: only {owner} (or an admin acting for it) publishes items over it,"
            f" not {acting.provider}",
        )
    return acting


def published_by_owner(item: CatalogItem, owner: str | None) -> bool:
    """The item is the owner's own publication: only then may a rule approve requests for it without the owner."""
    return owner is not None and item.provider == owner


async def seed_owners(
    sessions: async_sessionmaker, adapters: Mapping[str, Adapter], clock: Clock = SYSTEM_CLOCK
) -> None:
    """Give each configured service the owner its adapter declares, unless it already has one (never overwrite)."""
    async with sessions() as session:
        known = await owners(session)
    for name, adapter in adapters.items():
        department = adapter.provider_department
        if not department or name in known:
            continue
        async with sessions() as session:
            session.add(ServiceOwner(service=name, department=department, set_by="gateway", set_at=clock.now()))
            try:
                await session.commit()
            except IntegrityError:  # another node did it first
                await session.rollback()
                continue
        log.info("service %s is owned by %s (its adapter's 提供单位)", name, department)


async def set_owner(
    session: AsyncSession, service: str, department: str, set_by: str, clock: Clock = SYSTEM_CLOCK
) -> tuple[str | None, int]:
    """Hand `service` to `department`; its open and live requests follow (each with a history event). Commits.

    Items keep the department that published them, so a 无条件 item of the old owner no longer approves by rule
    until the new owner publishes or changes it. Returns the previous owner and how many requests moved.
    """
    now = clock.now()
    row = await session.get(ServiceOwner, service)
    previous = row.department if row is not None else None
    if row is None:
        session.add(ServiceOwner(service=service, department=department, set_by=set_by, set_at=now))
    else:
        row.department, row.set_by, row.set_at = department, set_by, now
    items = select(CatalogItem.item_id).where(CatalogItem.service == service)
    moved = (
        await session.scalars(
            select(SharingRequest).where(
                SharingRequest.item_id.in_(items),
                SharingRequest.state.in_(OPEN),
                SharingRequest.provider_department != department,
            )
        )
    ).all()
    for request in moved:
        session.add(
            SharingEvent(
                request_id=request.request_id,
                at=now,
                actor=set_by,
                actor_department=None,
                action="reassign",
                from_state=request.state,
                to_state=request.state,
                changes={"provider_department": {"before": request.provider_department, "after": department}},
                note={"rule": f"{service} now belongs to {department}; its owner decides"},
            )
        )
        request.provider_department = department
        request.updated_at = now
    await session.commit()
    return previous, len(moved)
