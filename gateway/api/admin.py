"""Admin API: register callers and their public keys, revoke keys; grants: issue, list, read, revoke."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.access import callers
from gateway.access import grants as grant_rows
from gateway.access.directory import CallerInfo, Directory, GrantInfo
from gateway.api.deps import AdaptersDep, ClockDep, DirectoryDep, QuotasDep, SessionsDep, SharingDep
from gateway.api.docs import SIGNED, json_body, problem_responses
from gateway.api.grant_duties import GrantChangesDep
from gateway.http.json_bodies import parse_body
from gateway.http.problems import Problem
from gateway.pipeline.exchange import Exchange, run_exchange
from gateway.sharing import workflow
from gateway.sharing.errors import DOMAIN_TYPES
from gateway.sharing.request_states import Actor
from gateway.storage.models import Grant
from schemas.api import CallerIn, CallerOut, GrantIn, GrantOut, KeyIn, KeyOut
from schemas.problems import ProblemCode

router = APIRouter(prefix="/v1", tags=["admin"])
ADMIN = {"admin"}


def _dump(value: BaseModel | list[Any]) -> bytes:
    if isinstance(value, list):
        return orjson.dumps([item.model_dump(mode="json") for item in value])
    return orjson.dumps(value.model_dump(mode="json"))


def _write(
    status: int, sessions: async_sessionmaker, directory: Directory, action: Callable[..., Awaitable[Any]]
) -> Callable[[Exchange], Awaitable[tuple[int, bytes]]]:
    """Run a registry write in a session, then drop this node's snapshot so the change holds on its next call."""

    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        async with sessions() as session:
            result = await action(exchange, session)
        directory.invalidate()
        return status, _dump(result)

    return handler


@router.post(
    "/callers",
    status_code=201,
    summary="Register a caller",
    description="Admin only. " + SIGNED,
    response_model=CallerOut,
    responses=problem_responses(401, 403, 409, 422),
    openapi_extra=json_body(CallerIn),
)
async def create_caller(request: Request, sessions: SessionsDep, directory: DirectoryDep, clock: ClockDep) -> Response:
    async def action(exchange: Exchange, session: Any) -> CallerOut:
        return await callers.add_caller(session, parse_body(exchange.body, CallerIn), clock)

    return await run_exchange(request, "admin.caller.add", _write(201, sessions, directory, action), roles=ADMIN)


@router.get(
    "/callers",
    summary="List callers",
    description="Admin only. " + SIGNED,
    response_model=list[CallerOut],
    responses=problem_responses(401, 403),
)
async def list_callers(request: Request, sessions: SessionsDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        async with sessions() as session:
            return 200, _dump(await callers.list_callers(session))

    return await run_exchange(request, "admin.caller.list", handler, roles=ADMIN)


@router.post(
    "/callers/{caller_id}/keys",
    status_code=201,
    summary="Add a public key to a caller",
    description="Admin only. " + SIGNED,
    response_model=KeyOut,
    responses=problem_responses(401, 403, 404, 409, 422),
    openapi_extra=json_body(KeyIn),
)
async def add_key(
    request: Request, caller_id: str, sessions: SessionsDep, directory: DirectoryDep, clock: ClockDep
) -> Response:
    async def action(exchange: Exchange, session: Any) -> KeyOut:
        return await callers.add_key(session, caller_id, parse_body(exchange.body, KeyIn), clock)

    return await run_exchange(request, "admin.key.add", _write(201, sessions, directory, action), roles=ADMIN)


@router.post(
    "/callers/{caller_id}/keys/{key_id}/revoke",
    summary="Revoke a caller's key",
    description="Admin only. Takes effect on every node within one second. " + SIGNED,
    response_model=KeyOut,
    responses=problem_responses(401, 403, 404),
)
async def revoke_key(
    request: Request, caller_id: str, key_id: str, sessions: SessionsDep, directory: DirectoryDep, clock: ClockDep
) -> Response:
    async def action(exchange: Exchange, session: Any) -> KeyOut:
        return await callers.revoke_key(session, caller_id, key_id, clock)

    return await run_exchange(request, "admin.key.revoke", _write(200, sessions, directory, action), roles=ADMIN)


@router.post(
    "/grants",
    status_code=201,
    summary="Issue a grant",
    description=(
        "Admin only; departments get grants by approval of a sharing request. The fields must be fields of the"
        " operation; `department` defaults to the caller's, and without `daily_quota` or `rate_limit` the grant"
        " has no such limit. " + SIGNED
    ),
    response_model=GrantOut,
    responses=problem_responses(401, 403, 404, 422),
    openapi_extra=json_body(GrantIn),
)
async def create_grant(
    request: Request, sessions: SessionsDep, directory: DirectoryDep, adapters: AdaptersDep, clock: ClockDep
) -> Response:
    async def action(exchange: Exchange, session: Any) -> GrantOut:
        return await grant_rows.add_grant(session, parse_body(exchange.body, GrantIn), adapters, clock)

    return await run_exchange(request, "admin.grant.add", _write(201, sessions, directory, action), roles=ADMIN)


def _sees_all(caller: CallerInfo) -> bool:
    return bool(caller.roles & {"admin", "officer", "coordinator"})


async def _visible_grants(session: AsyncSession, caller: CallerInfo, now: datetime) -> list[GrantOut]:
    if _sees_all(caller):
        return await grant_rows.list_grants(session, now=now)
    if "department" in caller.roles:
        return await grant_rows.grants_for_department(session, caller.department, now)
    return await grant_rows.list_grants(session, caller.caller_id, now)


@router.get(
    "/grants",
    summary="List grants",
    description=(
        "An admin, officer or coordinator sees every grant; a department the grants it holds and those on the items"
        " it provides; any other caller its own. " + SIGNED
    ),
    response_model=list[GrantOut],
    responses=problem_responses(401),
)
async def list_grants(request: Request, sessions: SessionsDep, sharing: SharingDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        async with sessions() as session:
            now = sharing.now()
            return 200, _dump(await _visible_grants(session, exchange.principal.caller, now))

    return await run_exchange(request, "grant.list", handler)


@router.get(
    "/grants/{grant_id}",
    summary="One grant, with today's use of its quota",
    description="Visible to the same callers as in the list; `used_today` counts calls since midnight Beijing time"
    " (shared by every grant of one sharing request). " + SIGNED,
    response_model=GrantOut,
    responses=problem_responses(401, 404),
)
async def get_grant(
    request: Request, grant_id: str, sessions: SessionsDep, sharing: SharingDep, quotas: QuotasDep
) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        async with sessions() as session:
            now = sharing.now()
            visible = {
                grant.grant_id: grant for grant in await _visible_grants(session, exchange.principal.caller, now)
            }
        grant = visible.get(grant_id)
        if grant is None:
            raise Problem(ProblemCode.GRANT_UNKNOWN, f"no grant {grant_id!r}")
        exchange.event.grant_id = grant.grant_id
        info = GrantInfo(
            grant.grant_id,
            grant.caller_id,
            grant.service,
            grant.operation,
            grant.purpose,
            tuple(grant.fields),
            grant.valid_from,
            grant.valid_to,
            grant.department,
            grant.daily_quota,
            grant.rate_limit,
            grant.sharing_request_id,
        )
        grant.used_today = await quotas.used_today(info)
        return 200, _dump(grant)

    return await run_exchange(request, "grant.read", handler)


class RevokeGrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "数据使用超出授权范围"}]})
    reason: str | None = Field(default=None, min_length=1, max_length=2000)


@router.post(
    "/grants/{grant_id}/revoke",
    summary="Revoke a grant",
    description=(
        "Admin only; the body (a `reason`) is optional. Takes effect on every node within one second. When it was"
        " the last live grant of a sharing request, the request is revoked too (and audited as such). " + SIGNED
    ),
    response_model=GrantOut,
    responses=problem_responses(401, 403, 404, 422),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": RevokeGrantIn.model_json_schema()}},
        }
    },
)
async def revoke_grant(request: Request, grant_id: str, sharing: SharingDep, changes: GrantChangesDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        body = parse_body(exchange.body, RevokeGrantIn, optional=True, domain_codes=DOMAIN_TYPES)
        now = sharing.now()

        async def apply(session: AsyncSession, actor: Actor) -> tuple[Grant, workflow.Outcome | None]:
            return await workflow.revoke_grant(session, actor, grant_id, body.reason, now)

        grant = await changes.apply(exchange, grant_id, now, apply)
        exchange.event.purpose = grant.purpose
        return 200, _dump(grant_rows.grant_out(grant, now))

    return await run_exchange(request, "admin.grant.revoke", handler, roles=ADMIN)
