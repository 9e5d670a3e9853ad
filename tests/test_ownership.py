"""Only the department owning a service (its 提供单位) publishes catalog items over it and decides requests for them.

Each way round the rule is tried over real HTTP, on SQLite and on PostgreSQL + Redis: an item over another
department's service, editing another department's item, a request for a foreign item by the department that
published it, a service nobody owns, and an admin acting for the owner (audited as such).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Table, delete, insert, select
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import TableClause
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.settings import Settings, load_settings
from gateway.sharing.ownership import owners, set_owner
from gateway.storage import db
from gateway.storage.models import CatalogItem, RegisteredUpstream, ServiceOwner, SharingEvent, SharingRequest
from tests.helpers.calls import assert_problem
from tests.helpers.services import DATABASE_URL, admin_connection, drop_database, with_database
from tests.helpers.sharing_world import (
    CHINA,
    CREDIT,
    DATA,
    FINANCE,
    REQUESTS,
    World,
    add_item,
    filed_and_submitted,
    invoke,
    item_body,
    real_now,
    request_body,
    state_of,
)


def refused(response: httpx.Response, status: int, code: str, field: str) -> dict[str, Any]:
    body = assert_problem(response, status, code)
    assert [error["field"] for error in body["errors"]] == [field], body
    return body


async def patch(world: World, who: str, path: str, body: dict[str, Any]) -> httpx.Response:
    async with world.client(who) as client:
        return await client.patch(path, json=body)


async def public_items(world: World) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=world.url) as anonymous:
        return (await anonymous.get("/v1/catalog")).json()["items"]


async def test_an_item_over_another_departments_service_is_refused(world: World) -> None:
    # The hole: 市数据管理局 publishes the credit platform's 失信被执行人 data, which 市发改委 owns, as 无条件.
    grab = item_body("SJJ-XY-0001", "unconditional", "dishonest-debtor")
    for who in ("data-officer", "finance-officer"):
        body = refused(await world.post(who, "/v1/catalog", grab), 403, "not_service_owner", "service")
        assert CREDIT in body["detail"]
    # Naming the owner as provider does not help: a department publishes as itself.
    named = {**grab, "provider": CREDIT}
    refused(await world.post("data-officer", "/v1/catalog", named), 403, "not_own_department", "provider")
    # Nor may an admin act for a department that does not own the service.
    for_data = {**grab, "provider": DATA}
    refused(await world.post("admin", "/v1/catalog", for_data), 403, "not_service_owner", "provider")
    assert await public_items(world) == []
    records = await world.audit_records("catalog.add")
    assert [(r["caller_id"], r["decision"], r["reason_code"]) for r in records] == [
        ("data-officer", "refused", "not_service_owner"),
        ("finance-officer", "refused", "not_service_owner"),
        ("data-officer", "refused", "not_own_department"),
        ("admin", "refused", "not_service_owner"),
    ]


async def test_editing_a_foreign_item_is_refused(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0002"))
    path = f"/v1/catalog/{item['item_id']}"
    loosen = {"share_attribute": "unconditional"}
    for who in ("data-officer", "finance-officer"):
        refused(await patch(world, who, path, loosen), 403, "not_service_owner", "service")
    refused(await patch(world, "admin", path, {**loosen, "provider": DATA}), 403, "not_service_owner", "provider")

    # A department's own item that no service delivers cannot be pointed at another department's service.
    secret = item_body(
        "SJJ-BM-0001",
        "not_shared",
        service=None,
        operation=None,
        legal_basis={"kind": "law", "title": "《中华人民共和国数据安全法》", "article": "第三十八条"},
    )
    own = await add_item(world, secret, who="data-officer")
    own_path = f"/v1/catalog/{own['item_id']}"
    repoint = {"service": "credit", "operation": "abnormal-operation", "share_attribute": "unconditional"}
    refused(await patch(world, "data-officer", own_path, repoint), 403, "not_service_owner", "service")
    # Nor edited by another department.
    refused(await patch(world, "finance-officer", own_path, {"name": "改名"}), 403, "not_item_provider", "provider")

    listing = {entry["code"]: entry for entry in await public_items(world)}
    assert (listing["FGW-XY-0002"]["share_attribute"], listing["SJJ-BM-0001"]["service"]) == ("conditional", None)

    # The owner changes its own item; the conditions of 有条件 go with the attribute.
    changed = await patch(world, "credit-head", path, loosen)
    assert changed.status_code == 200, changed.text
    out = changed.json()
    assert (out["share_attribute"], out["conditions"], out["provider"], out["service_owner"]) == (
        "unconditional",
        None,
        CREDIT,
        CREDIT,
    )
    assert_problem(await patch(world, "credit-head", path, {}), 422, "nothing_to_change")
    assert_problem(await patch(world, "credit-head", "/v1/catalog/cat-nope", loosen), 404, "item_unknown")
    records = await world.audit_records("catalog.update")
    assert [(r["caller_id"], r["decision"], r["reason_code"]) for r in records][-3:] == [
        ("credit-head", "allowed", None),
        ("credit-head", "refused", "nothing_to_change"),
        ("credit-head", "refused", "item_unknown"),
    ]


async def test_a_request_for_a_foreign_item_by_its_publisher_waits_for_the_owner(world: World) -> None:
    # An item 市数据管理局 published over the credit platform before owners existed: a row as it was stored then.
    async with world.gw.runtime.sessions() as session:
        session.add(
            CatalogItem(
                item_id="cat-legacy",
                code="SJJ-XY-0001",
                name="失信被执行人信息",
                provider=DATA,
                data_items=[
                    {"name": name, "title": name, "type": "string", "level": "general", "description": None}
                    for name in ("uscc", "listed")
                ],
                service="credit",
                operation="dishonest-debtor",
                share_attribute="unconditional",
                share_method="api",
                data_format="json",
                update_frequency="daily",
                created_by="data-officer",
                created_at=real_now(),
            )
        )
        await session.commit()
    [listed] = await public_items(world)
    assert (listed["provider"], listed["service_owner"]) == (DATA, CREDIT)

    submitted = await filed_and_submitted(world, "cat-legacy")
    # Not approved on submission: the 无条件 rule stands in only for the owner's own items.
    assert (submitted["state"], submitted["provider_department"], submitted["grants"]) == ("submitted", CREDIT, [])
    assert submitted["due_date"] == "2025-10-09"  # 1 working day after 30 Sep: 1–8 Oct are off
    request_id = submitted["request_id"]
    for who in ("data-officer", "data-head"):
        assert_problem(await world.post(who, f"{REQUESTS}/{request_id}/approve", {}), 403, "not_provider")
    assert (await invoke(world, "dishonest-debtor", "XM-2025-002")).status_code == 403

    approved = await world.post("credit-officer", f"{REQUESTS}/{request_id}/approve", {})
    assert approved.status_code == 200, approved.text
    assert (approved.json()["state"], approved.json()["decided_by"]) == ("granted", "credit-officer")
    assert (await invoke(world, "dishonest-debtor", "XM-2025-002")).status_code == 200


async def test_an_admin_acting_for_the_owner_is_audited_as_such(world: World) -> None:
    body = item_body("FGW-XY-0001", "unconditional", "dishonest-debtor", provider=CREDIT)
    item = await add_item(world, body, who="admin")
    assert (item["provider"], item["service_owner"]) == (CREDIT, CREDIT)
    [record] = await world.audit_records("catalog.add")
    assert (record["caller_id"], record["roles"], record["decision"]) == ("admin", "admin", "allowed")
    assert record["reason"] == f"admin admin acting for department {CREDIT}"
    assert (record["target_id"], record["service"], record["operation"]) == (
        item["item_id"],
        "credit",
        "dishonest-debtor",
    )

    path = f"/v1/catalog/{item['item_id']}"
    by_admin = await patch(world, "admin", path, {"description": "失信被执行人名单（法院公布）"})
    assert by_admin.status_code == 200, by_admin.text
    by_owner = await patch(world, "credit-officer", path, {"name": "失信被执行人信息"})
    assert by_owner.status_code == 200, by_owner.text
    updates = await world.audit_records("catalog.update")
    assert [(r["caller_id"], r["reason"], r["target_id"]) for r in updates] == [
        ("admin", f"admin admin acting for department {CREDIT}", item["item_id"]),
        ("credit-officer", None, item["item_id"]),
    ]
    # Published for the owner, it is the owner's own item: requests for it are approved on submission.
    submitted = await filed_and_submitted(world, item["item_id"])
    assert submitted["state"] == "granted"


async def test_the_owner_publishes_and_its_unconditional_item_is_granted_on_submission(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0001", "unconditional", "dishonest-debtor"))
    assert (item["provider"], item["service_owner"]) == (CREDIT, CREDIT)
    submitted = await filed_and_submitted(world, item["item_id"])
    assert (submitted["state"], submitted["provider_department"], submitted["decided_by"]) == (
        "granted",
        CREDIT,
        "system",
    )
    answer = await invoke(world, "dishonest-debtor", "XM-2025-002")
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["data"]) == {"uscc", "listed"}
    async with world.client("platform") as client:
        services = (await client.get("/v1/services")).json()["services"]
    assert {entry["service"]: entry["owner_department"] for entry in services} == {"credit": CREDIT}


async def test_a_service_nobody_owns_is_neither_published_nor_decided_until_an_admin_names_its_owner(
    world: World,
) -> None:
    item = await add_item(world, item_body("FGW-XY-0002"))
    request_id = (await filed_and_submitted(world, item["item_id"]))["request_id"]
    # As for an upstream registered before owners existed.
    async with world.gw.runtime.sessions() as session:
        await session.execute(delete(ServiceOwner).where(ServiceOwner.service == "credit"))
        await session.commit()

    refused(
        await world.post("credit-officer", "/v1/catalog", item_body("FGW-XY-0003")), 409, "service_unowned", "service"
    )
    refused(
        await world.post("admin", "/v1/catalog", item_body("FGW-XY-0003", provider=CREDIT)),
        409,
        "service_unowned",
        "service",
    )
    filed = await world.post("data-officer", REQUESTS, request_body(item["item_id"]))
    refused(filed, 409, "service_unowned", "item_id")
    approve = await world.post("credit-officer", f"{REQUESTS}/{request_id}/approve", {})
    refused(approve, 409, "service_unowned", "item_id")
    [listed] = await public_items(world)
    assert (listed["provider"], listed["service_owner"]) == (CREDIT, None)
    # Approval by default is the owner's silence; no owner was asked, so the overdue request is escalated instead.
    world.gw.app.state.sharing.overdue_action = "approve"
    world.set_clock(datetime(2025, 10, 23, 9, 0, tzinfo=CHINA))
    [swept] = await world.sweep()
    assert (swept.state, swept.grants, swept.history[-1].action) == ("submitted", [], "escalate")

    # An admin hands the service over: its open request follows, with the hand-over in its history.
    async with world.gw.runtime.sessions() as session:
        assert await set_owner(session, "credit", FINANCE, "admin") == (None, 1)
    moved = await state_of(world, request_id)
    assert moved["provider_department"] == FINANCE
    assert (moved["history"][-1]["action"], moved["history"][-1]["changes"]) == (
        "reassign",
        {"provider_department": {"before": CREDIT, "after": FINANCE}},
    )
    assert_problem(await world.post("credit-officer", f"{REQUESTS}/{request_id}/approve", {}), 403, "not_provider")
    approved = await world.post("finance-officer", f"{REQUESTS}/{request_id}/approve", {})
    assert approved.status_code == 200, approved.text


# --- the migration that introduced owners ---------------------------------------------------------------------

OLD_CREDIT = "市发展和改革委员会"  # how the demo named the credit platform's provider before owners existed


@asynccontextmanager
async def database_at_0005(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Settings, AsyncEngine]]:
    """An empty database migrated to the revision before owners, on SQLite or on the real PostgreSQL."""
    url = None
    if backend == "postgres":
        name = f"msjx_m_{secrets.token_hex(4)}"
        admin = await admin_connection()
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        url = with_database(DATABASE_URL, name)
    settings = load_settings(data_dir=tmp_path, database_url=url)
    engine = None
    try:
        await db.upgrade_async(settings, "0005")
        engine = db.create_engine(settings)
        yield settings, engine
    finally:
        if engine is not None:
            await engine.dispose()
        if url is not None:
            await drop_database(url)


UPSTREAM_COLUMNS = "name kind source contract digest policy safe operations revision created_at created_by".split()


def as_of_0005(table: Table, columns: Iterable[str]) -> TableClause:
    """Only the columns the table had at 0005: later revisions add columns (with defaults) that an insert would name."""
    return sa_table(table.name, *(sa_column(name, table.c[name].type) for name in columns))


def _legacy_item(item_id: str, provider: str, service: str, attribute: str) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "code": item_id.upper(),
        "name": item_id,
        "provider": provider,
        "data_items": [{"name": "listed", "title": "listed", "type": "boolean", "level": "general"}],
        "service": service,
        "operation": "dishonest-debtor",
        "share_attribute": attribute,
        "share_method": "api",
        "data_format": "json",
        "update_frequency": "daily",
        "created_by": "someone",
        "created_at": real_now(),
    }


def _legacy_request(request_id: str, item_id: str, provider: str, state: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "item_id": item_id,
        "requester_department": DATA,
        "provider_department": provider,
        "filed_by": "data-officer",
        "callers": ["platform"],
        "fields": ["listed"],
        "purpose_code": "XM-2025-002",
        "purpose_name": "企业研发费用补助",
        "basis": "b",
        "scenario": "s",
        "scope": "s",
        "share_method": "api",
        "valid_to": real_now() + timedelta(days=30),
        "daily_volume": 10,
        "state": state,
        "decided_by": "system" if state == "granted" else None,
        "created_at": real_now(),
        "updated_at": real_now(),
        "version": 1,
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_migration_gives_owners_and_never_leaves_a_request_with_a_non_owner(
    backend: str, tmp_path: Path
) -> None:
    async with database_at_0005(backend, tmp_path) as (settings, engine):
        async with engine.begin() as connection:
            contract = {"kind": "wsdl", "root": "x.wsdl", "documents": {}, "source": "x.wsdl"}
            await connection.execute(
                insert(as_of_0005(RegisteredUpstream.__table__, UPSTREAM_COLUMNS)).values(
                    name="huli-fulfilment",
                    kind="wsdl",
                    source="x.wsdl",
                    contract=contract,
                    digest="0" * 64,
                    policy={},
                    safe=[],
                    operations=[],
                    revision="r1",
                    created_at=real_now(),
                    created_by="admin",
                )
            )
            items = [
                _legacy_item("cat-grab", DATA, "credit", "unconditional"),  # H1: another department's data
                _legacy_item("cat-own", OLD_CREDIT, "credit", "conditional"),
                _legacy_item("cat-huli", DATA, "huli-fulfilment", "conditional"),
            ]
            await connection.execute(insert(as_of_0005(CatalogItem.__table__, items[0])), items)
            requests = [
                _legacy_request("sr-grabbed", "cat-grab", DATA, "granted"),
                _legacy_request("sr-waiting", "cat-own", OLD_CREDIT, "submitted"),
                _legacy_request("sr-refused", "cat-own", OLD_CREDIT, "refused"),
                _legacy_request("sr-huli", "cat-huli", DATA, "submitted"),
            ]
            await connection.execute(insert(as_of_0005(SharingRequest.__table__, requests[0])), requests)

        await db.upgrade_async(settings)

        async with db.sessionmaker(engine)() as session:
            assert await owners(session) == {
                "credit": CREDIT,
                "golden-tax": "市税务局",
                "market": "市市场监管局",
                "treasury": "市财政局",
            }  # and no owner guessed for the registered upstream
            rows = {row.request_id: row for row in (await session.scalars(select(SharingRequest))).all()}
            assert {name: (row.provider_department, row.version) for name, row in rows.items()} == {
                "sr-grabbed": (CREDIT, 2),
                "sr-waiting": (CREDIT, 2),
                "sr-refused": (OLD_CREDIT, 1),  # decided: history stays as it was
                "sr-huli": (DATA, 1),  # nobody owns the service: blocked at runtime (409) until an admin names one
            }
            events = (await session.scalars(select(SharingEvent).order_by(SharingEvent.request_id))).all()
            assert [(e.request_id, e.actor, e.action, e.changes) for e in events] == [
                (
                    "sr-grabbed",
                    "migration-0008",
                    "reassign",
                    {"provider_department": {"before": DATA, "after": CREDIT}},
                ),
                (
                    "sr-waiting",
                    "migration-0008",
                    "reassign",
                    {"provider_department": {"before": OLD_CREDIT, "after": CREDIT}},
                ),
            ]
            # Items keep who published them: the grabbed one is no owner's item, so never approved by rule again.
            item_providers = dict((await session.execute(select(CatalogItem.item_id, CatalogItem.provider))).all())
            assert item_providers == {"cat-grab": DATA, "cat-own": OLD_CREDIT, "cat-huli": DATA}

    # A deployment naming its departments otherwise hands the service over, and the requests follow.
    if backend == "sqlite":
        runner = CliRunner()
        where = ["--data-dir", str(tmp_path)]
        # The CLI runs its own event loop: off this one.
        moved = await asyncio.to_thread(runner.invoke, cli, ["upstreams", "owner", "credit", OLD_CREDIT, *where])
        assert moved.exit_code == 0, moved.output
        assert f"credit: owned by {OLD_CREDIT} (was {CREDIT}); 2 sharing request(s) now go to it" in moved.output
        shown = await asyncio.to_thread(runner.invoke, cli, ["upstreams", "owner", "huli-fulfilment", *where])
        assert shown.exit_code == 0 and "huli-fulfilment: (no owner)" in shown.output
        # A mistyped service is refused, not handed over: it would own nothing, and no request would follow.
        for args in (["creditt", OLD_CREDIT], ["creditt"]):
            typo = await asyncio.to_thread(runner.invoke, cli, ["upstreams", "owner", *args, *where])
            assert typo.exit_code == 1 and "unknown_service: no service 'creditt'" in typo.output, typo.output
