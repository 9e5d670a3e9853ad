"""The 资源目录: public reading (对社会公开, no signature) and registration of items by provider departments."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gateway.api.deps import AdaptersDep, SessionsDep, SharingDep
from gateway.api.docs import SIGNED, json_body, problem_responses
from gateway.http.json_bodies import load_body
from gateway.pipeline.exchange import Exchange, run_exchange
from gateway.sharing import catalog
from gateway.sharing.ownership import Publisher
from gateway.sharing.request_states import Actor
from schemas.sharing import CatalogItemIn, CatalogItemOut, CatalogItemPatch, PublicCatalog, PublicCatalogItem

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])
PUBLISHERS = {"department", "admin"}

PUBLIC = (
    " Public: no signature, and not audited (it shows nothing that is not published). For each item it lists which"
    " departments hold grants valid now and for which purposes, never which caller called what or about whom."
)


def _note(exchange: Exchange, item: CatalogItemOut, published: Publisher) -> None:
    """The audit record names the item, and an admin's acting for a department."""
    event = exchange.event
    event.service, event.operation, event.target_id = item.service, item.operation, item.item_id
    event.reason = published.audit_reason


def _json(model: PublicCatalog | PublicCatalogItem | CatalogItemOut) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


@router.get(
    "",
    summary="Public catalog",
    description="Every catalog item with its share attribute, conditions or legal basis." + PUBLIC,
    response_model=PublicCatalog,
    openapi_extra={"security": []},
)
async def public_catalog(
    sessions: SessionsDep,
    sharing: SharingDep,
    provider: Annotated[str | None, Query(description="only items of this provider department")] = None,
) -> Response:
    async with sessions() as session:
        listing = await catalog.public_catalog(session, sharing.now(), provider)
    return Response(_json(listing), media_type="application/json")


@router.get(
    "/{item_id}",
    summary="One public catalog item",
    description="One item, as in the public catalog." + PUBLIC,
    response_model=PublicCatalogItem,
    responses=problem_responses(404),
    openapi_extra={"security": []},
)
async def public_item(item_id: str, sessions: SessionsDep, sharing: SharingDep) -> Response:
    async with sessions() as session:
        item = await catalog.public_item(session, item_id, sharing.now())
    return Response(_json(item), media_type="application/json")


@router.post(
    "",
    status_code=201,
    summary="Register a catalog item",
    description=(
        "The department owning the item's service (its 提供单位) registers the item; an admin may, naming that"
        " department as `provider`, and is audited as acting for it. Any other caller gets 403"
        " `not_service_owner` (409 `service_unowned` while no department owns the service)."
        " 有条件 items state their conditions; 不予共享 items cite a 法律, 行政法规 or 国务院决定 with title and"
        " article. Every fault of the body is named in one 422 `item_incomplete` whose `errors[]` give each"
        " fault's field and `code` (e.g. `legal_basis_missing`, `legal_basis_kind_unknown`, `field_missing`). " + SIGNED
    ),
    response_model=CatalogItemOut,
    responses=problem_responses(401, 403, 409, 422),
    openapi_extra=json_body(CatalogItemIn),
)
async def add_item(request: Request, sessions: SessionsDep, adapters: AdaptersDep, sharing: SharingDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        document = load_body(exchange.body)
        if isinstance(document, dict) and isinstance(document.get("service"), str):
            exchange.event.service = document["service"][:128]
        actor = Actor.of(exchange.principal.caller)
        async with sessions() as session:
            item, published = await catalog.add_item(session, actor, document, adapters, sharing.now())
        _note(exchange, item, published)
        return 201, _json(item)

    return await run_exchange(request, "catalog.add", handler, roles=PUBLISHERS)


@router.patch(
    "/{item_id}",
    summary="Change a catalog item",
    description=(
        "Only the department owning the item's service changes it (an admin acting for that department, audited as"
        " such): 403 `not_service_owner` otherwise, also for pointing an item at another department's service."
        " The merged item is checked as a new one would be. " + SIGNED
    ),
    response_model=CatalogItemOut,
    responses=problem_responses(401, 403, 404, 409, 422),
    openapi_extra=json_body(CatalogItemPatch),
)
async def update_item(request: Request, item_id: str, sessions: SessionsDep, adapters: AdaptersDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        document = load_body(exchange.body)
        exchange.event.target_id = item_id
        actor = Actor.of(exchange.principal.caller)
        async with sessions() as session:
            item, published = await catalog.update_item(session, actor, item_id, document, adapters)
        _note(exchange, item, published)
        return 200, _json(item)

    return await run_exchange(request, "catalog.update", handler, roles=PUBLISHERS)
