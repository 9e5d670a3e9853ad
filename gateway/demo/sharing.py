"""Demo data of the sharing workflow: a catalog for every simulated system, and requests in every state.

Items are derived from the adapters, so a simulator added later gets its catalog too. Requests go
through the same workflow functions as the API, with past dates where a state needs time to have
passed (expired, overdue). Seeding happens once: a restart finds the requests and adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adapters.base import Adapter, Operation
from gateway.sharing import catalog, obligations, workflow
from gateway.sharing.ownership import owners
from gateway.sharing.request_states import Actor, effective_state
from gateway.storage.models import CatalogItem, Grant, SharingRequest
from schemas.sharing import (
    ApproveIn,
    CatalogItemIn,
    ConditionNotMet,
    Conditions,
    DataItem,
    DataUseIn,
    EndorseIn,
    LegalBasis,
    MissingItem,
    Purpose,
    RefuseIn,
    ReturnIn,
    RevokeIn,
    SharingRequestIn,
)

log = logging.getLogger("msjx.demo")
DATA = "市数据管理局"
CREDIT = "市发改委"

# Code prefix of each service's items; every item's provider is the owner of its service (its 提供单位).
PREFIXES = {"credit": "FGW-XY", "golden-tax": "SWJ-NS", "treasury": "CZJ-ZF", "market": "SCJ-DJ"}
NAMES = {
    ("credit", "dishonest-debtor"): "失信被执行人信息",
    ("credit", "abnormal-operation"): "经营异常名录信息",
    ("credit", "serious-violation"): "严重违法失信名单信息",
}
FIELD_TITLES = {"uscc": "统一社会信用代码", "listed": "是否在册", "cases": "执行案件", "entries": "列入记录"}
JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "array": "array"}

DATA_OFFICER = Actor("data-officer", DATA, frozenset({"department"}))
DATA_HEAD = Actor("data-head", DATA, frozenset({"department"}))
PROVIDER_OFFICERS = {CREDIT: Actor("credit-officer", CREDIT, frozenset({"department"}))}


def _data_items(operation: Operation) -> list[DataItem]:
    properties = operation.output_model.model_json_schema().get("properties", {})
    items = []
    for name in operation.fields:
        schema = properties.get(name, {})
        kind = JSON_TYPES.get(schema.get("type", ""), "object")
        title = (
            FIELD_TITLES.get(name) or (schema.get("description") or schema.get("title") or name).split(" (")[0][:200]
        )
        # Lists of cases and entries name courts, amounts and authorities: graded above the flags.
        items.append(DataItem(name=name, title=title, type=kind, level="important" if kind == "array" else "general"))
    return items


def catalog_bodies(adapters: Mapping[str, Adapter], owners: Mapping[str, str]) -> list[CatalogItemIn]:
    """One item per operation of each owned service, published as its owner: the first of each service 无条件,
    the others 有条件; and one 不予共享 item. A service nobody owns gets no items."""
    bodies = []
    for service, adapter in sorted(adapters.items()):
        provider = owners.get(service)
        if provider is None:
            continue
        prefix = PREFIXES.get(service, service.upper())
        for index, operation in enumerate(adapter.operations.values(), start=1):
            conditional = index > 1
            bodies.append(
                CatalogItemIn(
                    code=f"{prefix}-{index:04d}",
                    name=NAMES.get((service, operation.name), operation.summary[:200]),
                    provider=provider,
                    description=operation.summary,
                    data_items=_data_items(operation),
                    service=service,
                    operation=operation.name,
                    share_attribute="conditional" if conditional else "unconditional",
                    conditions=Conditions(scope="本市惠企政策兑现", purpose="免申即享资格比对")
                    if conditional
                    else None,
                    share_method="api",
                    update_frequency="daily",
                )
            )
    bodies.append(
        CatalogItemIn(
            code="SWJ-BM-0001",
            name="纳税人涉税保密信息",
            provider="市税务局",
            description="依法保密的纳税人涉税信息（演示：不予共享须列明法律依据）",
            data_items=[DataItem(name="secret_items", title="涉税保密事项", type="object", level="important")],
            share_attribute="not_shared",
            legal_basis=LegalBasis(kind="law", title="《中华人民共和国税收征收管理法》", article="第八条"),
            share_method="api",
            update_frequency="irregular",
        )
    )
    return bodies


async def _seed_catalog(session: AsyncSession, adapters: Mapping[str, Adapter], now: datetime) -> None:
    existing = set((await session.scalars(select(CatalogItem.code))).all())
    # An admin acting for each owner, as `POST /v1/catalog` with a named provider would.
    admin = Actor("demo-seed", None, frozenset({"admin"}))
    for body in catalog_bodies(adapters, await owners(session)):
        if body.code not in existing:
            await catalog.add_item(session, admin, body, adapters, now)


def _request(item: CatalogItem, code: str, name: str, valid_to: datetime, **extra: Any) -> SharingRequestIn:
    fields = [entry["name"] for entry in item.data_items if entry["level"] == "general"] or [item.data_items[0]["name"]]
    return SharingRequestIn(
        item_id=item.item_id,
        fields=fields,
        purpose=Purpose(code=code, name=name),
        basis="《厦门市惠企政策免申即享工作方案》",
        scenario=f"{name}：免申即享资格比对",
        scope="市数据管理局免申即享平台，仅用于资格比对，不对外提供",
        valid_to=valid_to,
        daily_volume=5000,
        callers=["platform"],
        **extra,
    )


async def _submitted(session: AsyncSession, body: SharingRequestIn, at: datetime) -> workflow.Outcome:
    filed = await workflow.file_request(session, DATA_OFFICER, body, at)
    return await workflow.endorse(session, DATA_HEAD, filed.row.request_id, EndorseIn(note="同意报送"), at)


async def _seed_requests(session: AsyncSession, now: datetime) -> None:
    items = list((await session.scalars(select(CatalogItem).where(CatalogItem.service.is_not(None)))).all())
    credit = {item.operation: item for item in items if item.service == "credit"}
    unconditional = credit.get("dishonest-debtor") or next(i for i in items if i.share_attribute == "unconditional")
    conditional = credit.get("abnormal-operation") or next(i for i in items if i.share_attribute == "conditional")
    provider = PROVIDER_OFFICERS.get(
        conditional.provider, Actor("demo-provider", conditional.provider, frozenset({"department"}))
    )
    year = now + timedelta(days=365)

    # draft: filed, waiting for the head
    await workflow.file_request(
        session, DATA_OFFICER, _request(conditional, "XM-2025-010", "高新技术企业认定奖励", year), now
    )
    # submitted: waiting for the provider, deadline in 10 working days
    await _submitted(session, _request(conditional, "XM-2025-011", "企业研发费用补助", year), now)
    # granted at once: 无条件 items are approved on submission
    await _submitted(session, _request(unconditional, "XM-2025-002", "惠企政策免申即享失信核查", year), now)
    # returned incomplete: every missing item at once
    returned = await _submitted(session, _request(conditional, "XM-2025-013", "稳岗返还", year), now)
    missing = [
        MissingItem(item="basis", reason="请补充政策文件文号"),
        MissingItem(item="scope", reason="请说明使用人员范围"),
    ]
    await workflow.return_request(session, provider, returned.row.request_id, ReturnIn(missing=missing), now)
    # refused, naming the condition not met
    refused = await _submitted(session, _request(conditional, "XM-2025-014", "招商引资奖励", year), now)
    reasons = RefuseIn(
        reasons=["申请用途为招商宣传，超出本目录的共享条件"],
        condition_not_met=ConditionNotMet(condition="purpose", explanation="仅限免申即享资格比对"),
    )
    await workflow.refuse(session, provider, refused.row.request_id, reasons, now)
    # approved, its grant starting next week
    later = _request(conditional, "XM-2025-015", "首次升规奖励", year, valid_from=now + timedelta(days=7))
    approved = await _submitted(session, later, now)
    # in part: one field fewer than asked, at most 2000 calls a day (the request's history shows both)
    narrowed = list(approved.row.fields)[:-1] or None
    partial = ApproveIn(daily_quota=2000, fields=narrowed)
    await workflow.approve(session, provider, approved.row.request_id, partial, now)
    # granted, used (the requester's register says so), revoked for use beyond its scope, the data destroyed
    revoked = await _submitted(session, _request(conditional, "XM-2025-016", "外贸稳增长补助", year), now)
    await workflow.approve(session, provider, revoked.row.request_id, ApproveIn(), now)
    query = select(Grant.grant_id).where(Grant.sharing_request_id == revoked.row.request_id)
    grant_ids = list((await session.scalars(query)).all())
    for grant_id in grant_ids:
        use = DataUseIn(kind="use", description="外贸稳增长补助资格比对", location="免申即享平台", volume=1200)
        await obligations.add_entry(session, DATA_OFFICER, grant_id, use, now)
    await workflow.revoke(session, provider, revoked.row.request_id, RevokeIn(reason="发现超出授权范围使用"), now)
    for grant_id in grant_ids:
        destroyed = DataUseIn(kind="destruction", description="授权撤销，比对结果已删除", location="免申即享平台")
        await obligations.add_entry(session, DATA_OFFICER, grant_id, destroyed, now)
    # overdue: submitted five weeks ago, never answered, escalated to the coordinators
    then = now - timedelta(days=35)
    overdue = await _submitted(session, _request(conditional, "QZ-2025-012", "技术改造补助", year), then)
    await workflow.apply_time(session, overdue.row.request_id, now, "escalate")
    # expired: granted two months ago for one month
    past = now - timedelta(days=60)
    expired = await _submitted(
        session, _request(conditional, "XM-2025-017", "一次性扩岗补助", now - timedelta(days=1)), past
    )
    await workflow.approve(session, provider, expired.row.request_id, ApproveIn(), past + timedelta(days=1))
    await workflow.apply_time(session, expired.row.request_id, now, "escalate")


async def seed_sharing(session: AsyncSession, adapters: Mapping[str, Adapter], now: datetime) -> list[dict[str, Any]]:
    """Seed once; return [{request_id, state, item, purpose}] of every request for the demo's sharing.json."""
    if not adapters:
        return []
    await _seed_catalog(session, adapters, now)
    if not await session.scalar(select(func.count()).select_from(SharingRequest)):
        # Deadlines past the last loaded year are provisional, never refused: the demo seeds on any date.
        await _seed_requests(session, now)
    rows = (await session.scalars(select(SharingRequest).order_by(SharingRequest.created_at))).all()
    items = {item.item_id: item for item in (await session.scalars(select(CatalogItem))).all()}
    return [
        {
            "request_id": row.request_id,
            "state": effective_state(row, now),
            "escalated": row.escalated_at is not None,
            "item": items[row.item_id].code,
            "purpose": row.purpose_code,
        }
        for row in rows
    ]
