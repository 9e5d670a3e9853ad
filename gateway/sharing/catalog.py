"""The 资源目录: provider departments register items; the public view adds who holds grants for what purpose."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.base import Adapter
from gateway.http.problems import Problem
from gateway.sharing.errors import Faults, forbidden, invalid, validate_collecting
from gateway.sharing.ownership import Publisher, owner_of, owners, publisher
from gateway.sharing.request_states import Actor
from gateway.storage.models import CatalogItem, Grant, SharingRequest
from schemas.problems import ProblemCode
from schemas.sharing import (
    LEGAL_BASIS_KIND_LABELS,
    LEVEL_LABELS,
    SHARE_ATTRIBUTE_LABELS,
    SHARE_METHOD_LABELS,
    UPDATE_FREQUENCY_LABELS,
    CatalogItemIn,
    CatalogItemOut,
    CatalogItemPatch,
    Conditions,
    DataItemOut,
    GrantHolder,
    LegalBasisOut,
    PublicCatalog,
    PublicCatalogItem,
    PurposeOut,
)


def item_out(row: CatalogItem, owner: str | None) -> CatalogItemOut:
    """The item as published, with the current owner of the service that delivers it (who decides requests)."""
    basis = row.legal_basis
    return CatalogItemOut(
        item_id=row.item_id,
        code=row.code,
        name=row.name,
        provider=row.provider,
        service_owner=owner,
        description=row.description,
        data_items=[DataItemOut(**item, level_label=LEVEL_LABELS[item["level"]]) for item in row.data_items],
        service=row.service,
        operation=row.operation,
        share_attribute=row.share_attribute,
        share_attribute_label=SHARE_ATTRIBUTE_LABELS[row.share_attribute],
        conditions=Conditions(**row.conditions) if row.conditions else None,
        legal_basis=LegalBasisOut(**basis, kind_label=LEGAL_BASIS_KIND_LABELS[basis["kind"]]) if basis else None,
        share_method=row.share_method,
        share_method_label=SHARE_METHOD_LABELS[row.share_method],
        data_format=row.data_format,
        update_frequency=row.update_frequency,
        update_frequency_label=UPDATE_FREQUENCY_LABELS[row.update_frequency],
        created_at=row.created_at,
    )


def item_faults() -> Faults:
    return Faults("Catalog item is incomplete or invalid", ProblemCode.ITEM_INCOMPLETE)


def check_item(values: Mapping[str, Any], adapters: Mapping[str, Adapter], faults: Faults) -> None:
    """Every fault of the item at once: delivery, data items, conditions and legal basis.

    `values` holds the fields that are valid on their own; a field missing there is a fault already.
    """
    broken = faults.fields()
    data_items = values.get("data_items")
    names = [item.name for item in data_items] if data_items is not None else []
    for index, name in enumerate(names):
        if name in names[:index]:
            faults.add(f"data_items/{index}/name", ProblemCode.DATA_ITEM_DUPLICATE, f"{name!r} is listed twice")
    attribute = values.get("share_attribute")
    service, operation_name = values.get("service"), values.get("operation")
    if service is None or operation_name is None:
        missing = "service" if service is None else "operation"
        if attribute is not None and attribute != "not_shared" and missing not in broken:
            faults.add(
                missing, ProblemCode.DELIVERY_MISSING, "a shared item names the service and operation that deliver it"
            )
    else:
        adapter = adapters.get(service)
        operation = adapter.operations.get(operation_name) if adapter else None
        if adapter is None:
            faults.add("service", ProblemCode.UNKNOWN_SERVICE, f"no service {service!r}; known: {sorted(adapters)}")
        elif operation is None:
            known = sorted(adapter.operations)
            faults.add(
                "operation", ProblemCode.UNKNOWN_OPERATION, f"{service} has no operation {operation_name!r}: {known}"
            )
        else:
            for index, name in enumerate(names):
                if name not in operation.fields:
                    faults.add(
                        f"data_items/{index}/name",
                        ProblemCode.FIELD_NOT_IN_OPERATION,
                        f"{service}/{operation_name} answers {list(operation.fields)}, not {name!r}",
                    )
    if attribute is None:
        return  # which of conditions or legal basis applies depends on it: already a fault
    conditions, basis = values.get("conditions"), values.get("legal_basis")
    if attribute == "conditional" and conditions is None and "conditions" not in broken:
        faults.add(
            "conditions", ProblemCode.CONDITIONS_MISSING, "a 有条件共享 item states its conditions (scope and purpose)"
        )
    if attribute != "conditional" and conditions is not None:
        faults.add("conditions", ProblemCode.CONDITIONS_NOT_APPLICABLE, "only a 有条件共享 item has conditions")
    if attribute == "not_shared" and basis is None and "legal_basis" not in broken:
        faults.add(
            "legal_basis",
            ProblemCode.LEGAL_BASIS_MISSING,
            "不予共享 needs a legal basis: a 法律, 行政法规 or 国务院决定, with its title and article",
        )
    if attribute != "not_shared" and basis is not None:
        faults.add("legal_basis", ProblemCode.LEGAL_BASIS_NOT_APPLICABLE, "only a 不予共享 item cites a legal basis")


async def _publisher(
    session: AsyncSession, actor: Actor, service: str | None, provider: str | None, faults: Faults
) -> Publisher | None:
    """ownership.publisher, with an admin's missing `provider` named among the faults instead of alone."""
    if actor.has("admin") and provider is None:
        if "provider" not in faults.fields():
            faults.add(
                "provider",
                ProblemCode.PROVIDER_MISSING,
                "an admin registers on behalf of a department and must name it",
            )
        return None
    return await publisher(session, actor, service, provider)


async def add_item(
    session: AsyncSession, actor: Actor, document: Any, adapters: Mapping[str, Adapter], now: datetime
) -> tuple[CatalogItemOut, Publisher]:
    """Register an item; only the owner of its service publishes it (or an admin naming that owner).

    Every fault of the body, of form and of content, is named in one 422 `item_incomplete` (一次性告知).
    """
    faults = item_faults()
    body, partial = validate_collecting(CatalogItemIn, document, faults)
    values: dict[str, Any] = dict(body) if body is not None else partial
    # Who may publish is settled before the body's content: a department learns nothing of another's service.
    # A service the gateway does not offer is left to check_item, which names it.
    service = values.get("service")
    known = service is None or service in adapters
    published = await _publisher(session, actor, service, values.get("provider"), faults) if known else None
    check_item(values, adapters, faults)
    faults.raise_if_any()
    assert body is not None and published is not None
    if (await session.scalars(select(CatalogItem.item_id).where(CatalogItem.code == body.code))).first():
        raise Problem(ProblemCode.ITEM_CODE_EXISTS, f"an item with code {body.code!r} exists")
    row = CatalogItem(
        item_id="cat-" + secrets.token_hex(8),
        code=body.code,
        name=body.name,
        provider=published.provider,
        description=body.description,
        data_items=[item.model_dump() for item in body.data_items],
        service=body.service,
        operation=body.operation,
        share_attribute=body.share_attribute,
        conditions=body.conditions.model_dump() if body.conditions else None,
        legal_basis=body.legal_basis.model_dump() if body.legal_basis else None,
        share_method=body.share_method,
        data_format=body.data_format,
        update_frequency=body.update_frequency,
        created_by=actor.caller_id,
        created_at=now,
    )
    session.add(row)
    await session.commit()
    return item_out(row, await owner_of(session, row.service)), published


def _not_nullable(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` that refuse null."""
    names = set()
    for name, info in model.model_fields.items():
        try:
            TypeAdapter(Annotated[info.annotation, info]).validate_python(None)
        except ValidationError:
            names.add(name)
    return frozenset(names)


_NOT_NULL = _not_nullable(CatalogItemIn)


async def update_item(
    session: AsyncSession,
    actor: Actor,
    item_id: str,
    document: Any,
    adapters: Mapping[str, Adapter],
) -> tuple[CatalogItemOut, Publisher]:
    """Change an item: allowed to whoever may publish it over its current service AND over the one it names now.

    A department may thus neither edit another's item nor point its own item at another department's service.
    The item is then published as that department: an owner taking over an older item becomes its provider.
    Every fault of the patch and of the item it would make is named in one 422 `item_incomplete`.
    """
    row = await get_item(session, item_id)
    faults = item_faults()
    patch, partial = validate_collecting(CatalogItemPatch, document, faults)
    changes = {name: getattr(patch, name) for name in patch.model_fields_set} if patch is not None else partial
    for name in sorted(_NOT_NULL & changes.keys()):
        if changes[name] is None:
            # The patch model allows null to mean "not given"; an item's own field cannot be emptied.
            faults.add(
                name, ProblemCode.FIELD_INVALID, "may not be null: leave the field out to keep its value", "null"
            )
            del changes[name]
    if not changes and not faults:
        raise invalid("", ProblemCode.NOTHING_TO_CHANGE, "the body changes no field", "Catalog item is invalid")
    current = CatalogItemIn.model_validate(
        {
            "code": row.code,
            "name": row.name,
            "description": row.description,
            "data_items": row.data_items,
            "service": row.service,
            "operation": row.operation,
            "share_attribute": row.share_attribute,
            "conditions": row.conditions,
            "legal_basis": row.legal_basis,
            "share_method": row.share_method,
            "data_format": row.data_format,
            "update_frequency": row.update_frequency,
        }
    )
    merged = current.model_copy(update={name: value for name, value in changes.items() if name != "provider"})
    if "share_attribute" in changes:
        # A new share attribute drops what only the old one had, unless the patch gives it anew.
        for name in ("conditions", "legal_basis"):
            if name not in changes:
                merged = merged.model_copy(update={name: None})
    # An admin acts for the item's provider unless it names the department it acts for.
    provider = changes.get("provider")
    named = provider if provider is not None else (row.provider if actor.has("admin") else None)
    published = await publisher(session, actor, row.service, named)
    if row.service is None and published.provider != row.provider:
        raise forbidden(
            ProblemCode.NOT_ITEM_PROVIDER,
            f"{row.code} is published by {row.provider}, not {published.provider}",
            "provider",
        )
    if merged.service != row.service and merged.service in adapters:
        published = await publisher(session, actor, merged.service, published.provider)
    values = {name: value for name, value in dict(merged).items() if name not in faults.fields()}
    check_item(values, adapters, faults)
    faults.raise_if_any()
    row.name = merged.name
    row.provider = published.provider
    row.description = merged.description
    row.data_items = [item.model_dump() for item in merged.data_items]
    row.service, row.operation = merged.service, merged.operation
    row.share_attribute = merged.share_attribute
    row.conditions = merged.conditions.model_dump() if merged.conditions else None
    row.legal_basis = merged.legal_basis.model_dump() if merged.legal_basis else None
    row.share_method = merged.share_method
    row.data_format = merged.data_format
    row.update_frequency = merged.update_frequency
    await session.commit()
    return item_out(row, await owner_of(session, row.service)), published


async def get_item(session: AsyncSession, item_id: str) -> CatalogItem:
    row = await session.get(CatalogItem, item_id)
    if row is None:
        raise Problem(ProblemCode.ITEM_UNKNOWN, f"no catalog item {item_id!r}")
    return row


async def _holders(session: AsyncSession, items: list[CatalogItem], now: datetime) -> dict[str, list[GrantHolder]]:
    """Per item: the departments holding grants valid now, and their purposes.

    A grant made by a sharing request belongs to that request's item; a grant an admin issued directly
    belongs to every item delivered by the same service and operation.
    """
    query = (
        select(Grant, SharingRequest.item_id)
        .outerjoin(SharingRequest, Grant.sharing_request_id == SharingRequest.request_id)
        .where(Grant.revoked_at.is_(None), Grant.valid_to > now, Grant.valid_from <= now)
    )
    by_delivery: dict[tuple[str | None, str | None], list[str]] = {}
    for item in items:
        by_delivery.setdefault((item.service, item.operation), []).append(item.item_id)
    found: dict[str, dict[str, dict[str, str | None]]] = {}
    for grant, item_id in (await session.execute(query)).all():
        targets = [item_id] if item_id else by_delivery.get((grant.service, grant.operation), [])
        for target in targets:
            purposes = found.setdefault(target, {}).setdefault(grant.department, {})
            if purposes.get(grant.purpose) is None:
                purposes[grant.purpose] = grant.purpose_name
    return {
        item_id: [
            GrantHolder(
                department=department,
                purposes=[PurposeOut(code=code, name=name) for code, name in sorted(purposes.items())],
            )
            for department, purposes in sorted(departments.items())
        ]
        for item_id, departments in found.items()
    }


async def public_catalog(session: AsyncSession, now: datetime, provider: str | None = None) -> PublicCatalog:
    query = select(CatalogItem).order_by(CatalogItem.provider, CatalogItem.code)
    if provider is not None:
        query = query.where(CatalogItem.provider == provider)
    items = list((await session.scalars(query)).all())
    holders = await _holders(session, items, now)
    owned = await owners(session)
    return PublicCatalog(
        items=[
            PublicCatalogItem(
                **item_out(item, owned.get(item.service or "")).model_dump(), grants=holders.get(item.item_id, [])
            )
            for item in items
        ]
    )


async def public_item(session: AsyncSession, item_id: str, now: datetime) -> PublicCatalogItem:
    item = await get_item(session, item_id)
    holders = await _holders(session, [item], now)
    owner = await owner_of(session, item.service)
    return PublicCatalogItem(**item_out(item, owner).model_dump(), grants=holders.get(item.item_id, []))
