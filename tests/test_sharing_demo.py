"""The demo's sharing data (a catalog for every simulated system, requests in every state), and grants as the
departments see them: listing by role, and revoking a request's last grant revokes the request."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from gateway.access import callers
from gateway.demo.setup import DEMO_CALLERS
from gateway.demo.sharing import catalog_bodies, seed_sharing
from gateway.runtime import build_adapters
from gateway.settings import load_settings
from gateway.sharing.ownership import owners, seed_owners
from gateway.storage import db
from gateway.storage.models import AuditRecord, CatalogItem, DataUseEntry, SharingRequest
from schemas.api import CallerIn
from tests.helpers.calls import assert_problem
from tests.helpers.sharing_world import World, add_item, filed_and_submitted, item_body

# A day the installed calendar surely knows (its deadlines reach some weeks ahead), so that the test does not
# depend on chinese-calendar having published next year's holidays by the day it runs.
SEEDED_AT = datetime(2025, 11, 20, 2, 0, tzinfo=UTC)
STATES = {"draft", "submitted", "approved", "refused", "returned", "granted", "revoked", "expired"}


async def test_demo_seeds_a_catalog_for_every_system_and_requests_in_every_state(
    tmp_path: Path, credit_url: str
) -> None:
    settings = load_settings(data_dir=tmp_path, upstream_urls={"credit": credit_url})
    await db.upgrade_async(settings)
    adapters = build_adapters(settings)
    engine = db.create_engine(settings)
    sessions = db.sessionmaker(engine)
    try:
        async with sessions() as session:
            for demo in DEMO_CALLERS:
                body = CallerIn(
                    caller_id=demo.caller_id, name=demo.name, department=demo.department, roles=list(demo.roles)
                )
                await callers.add_caller(session, body)
            first = await seed_sharing(session, adapters, SEEDED_AT)
        assert {entry["state"] for entry in first} == STATES
        assert any(entry["escalated"] for entry in first), "one overdue request is escalated"
        async with sessions() as session:
            items = (await session.scalars(select(CatalogItem))).all()
            again = await seed_sharing(session, adapters, SEEDED_AT)
        delivered = {(item.service, item.operation) for item in items}
        for name, adapter in adapters.items():
            assert {(name, operation) for operation in adapter.operations} <= delivered, name
        assert {item.share_attribute for item in items} == {"unconditional", "conditional", "not_shared"}
        assert [entry["request_id"] for entry in again] == [entry["request_id"] for entry in first], "seeded once"
        async with sessions() as session:
            decisions = [row.decision for row in (await session.scalars(select(SharingRequest))).all()]
            register = (await session.scalars(select(DataUseEntry))).all()
        partial = [d for d in decisions if d and d.get("partial")]
        assert partial and "fields" in partial[0]["narrowed"], "one request is approved in part"
        assert sorted(entry.kind for entry in register) == ["destruction", "use"], "the revoked grant's data is gone"
        async with sessions() as session:
            assert len((await session.scalars(select(CatalogItem))).all()) == len(items)
    finally:
        await engine.dispose()


async def test_grants_as_each_role_sees_them_and_revoking_the_last_revokes_the_request(world: World) -> None:
    item = await add_item(world, item_body("FGW-G", "unconditional", "dishonest-debtor"))
    request = await filed_and_submitted(world, item["item_id"], purpose={"code": "XM-2025-020", "name": "稳岗"})
    [grant] = request["grants"]
    everything = {entry["grant_id"] for entry in (await world.get("officer", "/v1/grants")).json()}
    direct = {world.gw.grant_id, world.gw.narrow_grant_id}  # conftest's grants to the platform, same department
    assert everything == {grant["grant_id"]} | direct
    for who, expected in [
        ("data-officer", everything),  # the department holding them
        ("credit-officer", {grant["grant_id"]}),  # the provider of this one
        ("finance-officer", set()),
    ]:
        listing = await world.get(who, "/v1/grants")
        assert {entry["grant_id"] for entry in listing.json()} == expected, who
    platform_view = (await world.get("platform", "/v1/grants")).json()
    assert grant["grant_id"] in {entry["grant_id"] for entry in platform_view}
    single = await world.get("data-officer", f"/v1/grants/{grant['grant_id']}")
    assert single.json()["sharing_request_id"] == request["request_id"]
    assert single.json()["used_today"] == 0
    assert_problem(await world.get("finance-officer", f"/v1/grants/{grant['grant_id']}"), 404, "grant_unknown")

    assert_problem(await world.post("credit-officer", f"/v1/grants/{grant['grant_id']}/revoke"), 403, "role_forbidden")
    revoked = await world.post("admin", f"/v1/grants/{grant['grant_id']}/revoke", {"reason": "停止使用"})
    assert revoked.status_code == 200, revoked.text
    assert (revoked.json()["revoked_by"], revoked.json()["revoke_reason"]) == ("admin", "停止使用")
    after = (await world.get("admin", f"/v1/sharing-requests/{request['request_id']}")).json()
    assert (after["state"], after["ended_by"], after["history"][-1]["action"]) == ("revoked", "admin", "revoke")
    [cascade] = [r for r in await world.audit_records("sharing.revoke")]
    assert (cascade["caller_id"], cascade["grant_id"]) == ("admin", grant["grant_id"])
    assert (await world.opened_response(cascade))["history"][-1]["changes"]["state"] == {
        "before": "granted",
        "after": "revoked",
    }
    # Revoking again changes nothing and says so by returning the same revocation.
    again = await world.post("admin", f"/v1/grants/{grant['grant_id']}/revoke")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    async with world.gw.runtime.engine.connect() as connection:
        rows = (await connection.execute(select(AuditRecord.event).where(AuditRecord.event == "sharing.revoke"))).all()
    assert len(rows) == 1


async def test_every_demo_item_is_published_by_the_department_owning_its_system(tmp_path: Path) -> None:
    # Built, never called: the catalog comes from the adapters' operations.
    unused = "http://127.0.0.1:9"
    settings = load_settings(
        data_dir=tmp_path, upstream_urls={name: unused for name in ("credit", "golden-tax", "market", "treasury")}
    )
    await db.upgrade_async(settings)
    adapters = build_adapters(settings)
    engine = db.create_engine(settings)
    try:
        await seed_owners(db.sessionmaker(engine), adapters)
        async with db.sessionmaker(engine)() as session:
            owned = await owners(session)
        bodies = catalog_bodies(adapters, owned)
    finally:
        await engine.dispose()
    expected = {"credit": "市发改委", "golden-tax": "市税务局", "market": "市市场监管局", "treasury": "市财政局"}
    assert {name: owned[name] for name in adapters} == expected
    delivered = [body for body in bodies if body.service is not None]
    assert {body.service for body in delivered} == set(expected)
    assert all(body.provider == expected[body.service] for body in delivered if body.service), bodies
    # Every owner has a demo caller to decide its requests with.
    departments = {caller.department for caller in DEMO_CALLERS if "department" in caller.roles}
    assert set(expected.values()) <= departments
