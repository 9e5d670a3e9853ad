"""Admin API for district systems: register an upstream from its WSDL or OpenAPI document, list, remove."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.deps import AdaptersDep, ClockDep, DirectoryDep, SessionsDep, SettingsDep
from gateway.api.docs import SIGNED, json_body, problem_responses
from gateway.http.json_bodies import parse_body
from gateway.pipeline.exchange import Exchange, run_exchange
from gateway.upstreams import registry as upstreams
from gateway.upstreams.registry import UpstreamIn, UpstreamOut, soap_auth

router = APIRouter(prefix="/v1/upstreams", tags=["upstreams"])
ADMIN = {"admin"}
LIVE = "Live on every gateway node within about a second, without a restart."


@router.post(
    "",
    status_code=201,
    summary="Register an upstream",
    description=(
        "Admin only. `owner_department` names the department owning the system's data (提供单位): only it publishes"
        " catalog items over the service and decides requests for them. "
        "The contract (its documents inline, or by http(s) URL from a host the operator allows in "
        "MSJX_CONTRACT_FETCH_ALLOW, else 422 `contract_fetch_forbidden`) is read once and stored; its operations "
        "become `/v1/services/{name}/{operation}` with JSON schemas derived from it. rpc/encoded, MTOM and other "
        "constructs the gateway cannot carry are refused here (422 `contract_unsupported`, naming them). "
        + LIVE
        + " "
        + SIGNED
    ),
    response_model=UpstreamOut,
    responses=problem_responses(401, 403, 409, 422),
    openapi_extra=json_body(UpstreamIn),
)
async def add_upstream(
    request: Request, sessions: SessionsDep, adapters: AdaptersDep, settings: SettingsDep, clock: ClockDep
) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        body: UpstreamIn = parse_body(exchange.body, UpstreamIn)
        reserved = upstreams.BUILT_IN | adapters.static_names
        # Fetching and parsing a contract blocks (zeep is synchronous): off the event loop.
        prepared = await asyncio.to_thread(
            upstreams.prepare,
            body.name,
            body.kind,
            source=body.url,
            files=body.files,
            root=body.root,
            endpoint=body.endpoint,
            safe=body.safe,
            policy=body.policy,
            allow_files=False,
            reserved=reserved,
            fetch_allow=settings.contract_fetch_allowlist,
            soap_auth=soap_auth(body),
        )
        async with sessions() as session:
            out = await upstreams.add_upstream(
                session, prepared, exchange.principal.caller.caller_id, body.owner_department, clock.now()
            )
        await adapters.refresh()  # this node at once; the others on their next poll
        return 201, orjson.dumps(out.model_dump(mode="json"))

    return await run_exchange(request, "admin.upstream.add", handler, roles=ADMIN)


@router.get(
    "",
    summary="List registered upstreams",
    description="Admin only. " + SIGNED,
    response_model=list[UpstreamOut],
    responses=problem_responses(401, 403),
)
async def list_upstreams(request: Request, sessions: SessionsDep, catalog: AdaptersDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        async with sessions() as session:
            rows = await upstreams.list_upstreams(session)
        listing: list[dict[str, Any]] = []
        for row in rows:
            entry = row.model_dump(mode="json")
            adapter = catalog.get(row.name)
            describe = getattr(adapter, "describe", None)
            if describe is not None:
                entry["operations"] = describe()
            entry["live"] = adapter is not None
            listing.append(entry)
        return 200, orjson.dumps(listing)

    return await run_exchange(request, "admin.upstream.list", handler, roles=ADMIN)


@router.delete(
    "/{name}",
    summary="Remove a registered upstream",
    description="Admin only. Its grants are revoked with it. " + LIVE + " " + SIGNED,
    response_model=UpstreamOut,
    responses=problem_responses(401, 403, 404),
)
async def remove_upstream(
    request: Request, name: str, sessions: SessionsDep, directory: DirectoryDep, adapters: AdaptersDep, clock: ClockDep
) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        async with sessions() as session:
            out, revoked = await upstreams.remove_upstream(session, name, clock.now())
        directory.invalidate()
        await adapters.refresh()
        return 200, orjson.dumps({**out.model_dump(mode="json"), "grants_revoked": revoked})

    return await run_exchange(request, "admin.upstream.remove", handler, roles=ADMIN, service=name)
