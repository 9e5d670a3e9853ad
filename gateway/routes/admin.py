"""Admin API: register callers and their public keys, revoke keys, issue and revoke grants."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway import registry
from gateway.exchange import Exchange, run_exchange
from gateway.routes.docs import SIGNED, json_body, problem_responses
from gateway.routes.services import parse_json
from schemas.api import CallerIn, CallerOut, GrantIn, GrantOut, KeyIn, KeyOut

router = APIRouter(prefix="/v1", tags=["admin"])
ADMIN = {"admin"}


def _dump(value: BaseModel | list[Any]) -> bytes:
    if isinstance(value, list):
        return orjson.dumps([item.model_dump(mode="json") for item in value])
    return orjson.dumps(value.model_dump(mode="json"))


def _write(status: int, action: Callable[..., Awaitable[Any]]) -> Callable[[Exchange], Awaitable[tuple[int, bytes]]]:
    """Run a registry write in a session, then drop this node's snapshot so the change holds on its next call."""

    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        async with exchange.runtime.sessions() as session:
            result = await action(exchange, session)
        exchange.runtime.directory.invalidate()
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
async def create_caller(request: Request) -> Response:
    async def action(exchange: Exchange, session: Any) -> CallerOut:
        return await registry.add_caller(session, parse_json(exchange.body, CallerIn))

    return await run_exchange(request, "admin.caller.add", _write(201, action), roles=ADMIN)


@router.get(
    "/callers",
    summary="List callers",
    description="Admin only. " + SIGNED,
    response_model=list[CallerOut],
    responses=problem_responses(401, 403),
)
async def list_callers(request: Request) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        async with exchange.runtime.sessions() as session:
            return 200, _dump(await registry.list_callers(session))

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
async def add_key(request: Request, caller_id: str) -> Response:
    async def action(exchange: Exchange, session: Any) -> KeyOut:
        return await registry.add_key(session, caller_id, parse_json(exchange.body, KeyIn))

    return await run_exchange(request, "admin.key.add", _write(201, action), roles=ADMIN)


@router.post(
    "/callers/{caller_id}/keys/{key_id}/revoke",
    summary="Revoke a caller's key",
    description="Admin only. Takes effect on every node within one second. " + SIGNED,
    response_model=KeyOut,
    responses=problem_responses(401, 403, 404),
)
async def revoke_key(request: Request, caller_id: str, key_id: str) -> Response:
    async def action(exchange: Exchange, session: Any) -> KeyOut:
        return await registry.revoke_key(session, caller_id, key_id)

    return await run_exchange(request, "admin.key.revoke", _write(200, action), roles=ADMIN)


@router.post(
    "/grants",
    status_code=201,
    summary="Issue a grant",
    description="Admin only. The fields must be fields of the operation. " + SIGNED,
    response_model=GrantOut,
    responses=problem_responses(401, 403, 404, 422),
    openapi_extra=json_body(GrantIn),
)
async def create_grant(request: Request) -> Response:
    async def action(exchange: Exchange, session: Any) -> GrantOut:
        return await registry.add_grant(session, parse_json(exchange.body, GrantIn), exchange.runtime.adapters)

    return await run_exchange(request, "admin.grant.add", _write(201, action), roles=ADMIN)


@router.get(
    "/grants",
    summary="List grants",
    description="An admin or officer sees every grant; any other caller sees its own. " + SIGNED,
    response_model=list[GrantOut],
    responses=problem_responses(401),
)
async def list_grants(request: Request) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        caller = exchange.principal.caller
        only = None if caller.roles & {"admin", "officer"} else caller.caller_id
        async with exchange.runtime.sessions() as session:
            return 200, _dump(await registry.list_grants(session, only))

    return await run_exchange(request, "grant.list", handler)


@router.post(
    "/grants/{grant_id}/revoke",
    summary="Revoke a grant",
    description="Admin only. Takes effect on every node within one second. " + SIGNED,
    response_model=GrantOut,
    responses=problem_responses(401, 403, 404),
)
async def revoke_grant(request: Request, grant_id: str) -> Response:
    async def action(exchange: Exchange, session: Any) -> GrantOut:
        return await registry.revoke_grant(session, grant_id)

    return await run_exchange(request, "admin.grant.revoke", _write(200, action), roles=ADMIN)
