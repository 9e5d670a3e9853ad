"""Grants after approval over HTTP: suspension for misuse and resumption, and the holder's register of use.

Each is one audited exchange; a suspension or resumption also writes a history entry on the grant's request,
which gets its own `sharing.suspend` / `sharing.resume` record like every other transition of a request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.access import grants as grant_rows
from gateway.access.directory import Directory
from gateway.api.deps import AuditDep, DirectoryDep, SessionsDep, SharingDep
from gateway.api.docs import SIGNED, json_body, problem_responses
from gateway.audit.writer import AuditWriter
from gateway.http.json_bodies import parse_body
from gateway.pipeline.exchange import Exchange, run_exchange
from gateway.sharing import obligations, workflow
from gateway.sharing.errors import DOMAIN_TYPES
from gateway.sharing.request_states import Actor
from gateway.sharing.service import transition_event
from gateway.storage.models import Grant
from schemas.api import GrantOut
from schemas.sharing import DataUseIn, DataUseOut, DataUseRegister, ResumeIn, SuspendIn

router = APIRouter(prefix="/v1/grants", tags=["grants"])
Change = Callable[[AsyncSession, Actor, str, Any, datetime], Awaitable[tuple[Grant, workflow.Outcome | None]]]


@dataclass(frozen=True)
class GrantChanges:
    """Applies a change to a grant as an exchange's caller, and makes every node see it."""

    sessions: async_sessionmaker
    directory: Directory
    audit: AuditWriter

    async def apply(
        self,
        exchange: Exchange,
        grant_id: str,
        now: datetime,
        apply: Callable[[AsyncSession, Actor], Awaitable[tuple[Grant, workflow.Outcome | None]]],
    ) -> Grant:
        """When the change moved the grant's sharing request too (its last live grant revoked, say), that
        transition gets its own audit record with its before and after, like any other transition of a request."""
        caller = exchange.principal.caller
        exchange.event.grant_id = grant_id
        async with self.sessions() as session:
            grant, outcome = await apply(session, Actor.of(caller))
            cascade = await workflow.outcome_out(session, outcome, now) if outcome is not None else None
        # This node refuses (or serves) the grant on its next call; every other node within 1 s.
        self.directory.invalidate()
        if cascade is not None and outcome is not None:
            await self.audit.append(
                transition_event(
                    cascade,
                    outcome,
                    caller_id=caller.caller_id,
                    department=caller.department,
                    roles=tuple(sorted(caller.roles)),
                )
            )
        return grant


async def _grant_changes(sessions: SessionsDep, directory: DirectoryDep, audit: AuditDep) -> GrantChanges:
    return GrantChanges(sessions, directory, audit)


GrantChangesDep = Annotated[GrantChanges, Depends(_grant_changes)]


def _change_route(name: str, model: type[SuspendIn] | type[ResumeIn], change: Change, *, optional: bool) -> Any:
    async def route(request: Request, grant_id: str, sharing: SharingDep, changes: GrantChangesDep) -> Response:
        async def handler(exchange: Exchange) -> tuple[int, bytes]:
            body = parse_body(exchange.body, model, optional=optional, domain_codes=DOMAIN_TYPES)
            now = sharing.now()

            async def apply(session: AsyncSession, actor: Actor) -> tuple[Grant, workflow.Outcome | None]:
                return await change(session, actor, grant_id, body, now)

            grant = await changes.apply(exchange, grant_id, now, apply)
            event = exchange.event
            event.service, event.operation, event.purpose = grant.service, grant.operation, grant.purpose
            return 200, orjson.dumps(grant_rows.grant_out(grant, now).model_dump(mode="json"))

        return await run_exchange(request, f"grant.{name}", handler, roles={"department", "admin"})

    return route


async def _suspend(session: AsyncSession, actor: Actor, grant_id: str, body: Any, now: datetime) -> Any:
    return await obligations.suspend(session, actor, grant_id, body, now)


async def _resume(session: AsyncSession, actor: Actor, grant_id: str, body: Any, now: datetime) -> Any:
    return await obligations.resume(session, actor, grant_id, body, now)


router.add_api_route(
    "/{grant_id}/suspend",
    _change_route("suspend", SuspendIn, _suspend, optional=False),
    methods=["POST"],
    summary="Suspend a grant for misuse",
    description=(
        "Its provider department or an admin stops a grant (暂停共享) with a `reason`: every call under it is refused"
        " with 403 `grant_suspended` on every node within one second, until it is resumed. Unlike a revocation the"
        " grant and its request stay; the suspension has no deadline of its own, the grant's `valid_to` bounds it."
        " 422 `already_suspended`, `invalid_state` (revoked or expired). " + SIGNED
    ),
    response_model=GrantOut,
    responses=problem_responses(401, 403, 404, 422),
    openapi_extra=json_body(SuspendIn),
)
_resume_body = json_body(ResumeIn)
_resume_body["requestBody"]["required"] = False
router.add_api_route(
    "/{grant_id}/resume",
    _change_route("resume", ResumeIn, _resume, optional=True),
    methods=["POST"],
    summary="Resume a suspended grant",
    description=(
        "Its provider department or an admin ends the suspension (body optional: a `reason`); calls are served again."
        " The request's history keeps when, by whom and why it was suspended. 422 `not_suspended`. " + SIGNED
    ),
    response_model=GrantOut,
    responses=problem_responses(401, 403, 404, 422),
    openapi_extra=_resume_body,
)


@router.post(
    "/{grant_id}/register",
    status_code=201,
    summary="Record a use, storage or destruction of received data",
    description=(
        "The department holding the grant keeps its register (条例: records of use, storage and destruction, kept at"
        " least 3 years): each entry is kept until `keep_until` (refused changes and early deletion by a database"
        " trigger) and goes into `audit export`. 403 `not_holder` for anyone else. " + SIGNED
    ),
    response_model=DataUseOut,
    responses=problem_responses(401, 403, 404, 422),
    openapi_extra=json_body(DataUseIn),
)
async def add_register_entry(request: Request, grant_id: str, sessions: SessionsDep, sharing: SharingDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        body = parse_body(exchange.body, DataUseIn, domain_codes=DOMAIN_TYPES)
        exchange.event.grant_id = grant_id
        async with sessions() as session:
            entry = await obligations.add_entry(
                session, Actor.of(exchange.principal.caller), grant_id, body, sharing.now()
            )
        return 201, orjson.dumps(entry.model_dump(mode="json"))

    return await run_exchange(request, "grant.register.add", handler, roles={"department"})


@router.get(
    "/{grant_id}/register",
    summary="A grant's register of use, storage and destruction",
    description=(
        "The holding department, the provider, officers and admins read it, oldest first; `state` is `destroyed` once"
        " the last entry is a destruction. " + SIGNED
    ),
    response_model=DataUseRegister,
    responses=problem_responses(401, 403, 404),
)
async def read_register(request: Request, grant_id: str, sessions: SessionsDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        exchange.event.grant_id = grant_id
        async with sessions() as session:
            register = await obligations.read_register(session, Actor.of(exchange.principal.caller), grant_id)
        return 200, orjson.dumps(register.model_dump(mode="json"))

    return await run_exchange(request, "grant.register.read", handler, roles={"department", "officer", "admin"})
