"""The 资源目录: registration by provider departments with every refusal, and the public, unsigned view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.calls import assert_problem
from tests.helpers.sharing_world import CREDIT, World, add_item, item_body, sharing_world


@pytest.fixture
async def world(tmp_path: Path, credit_url: str) -> AsyncIterator[World]:
    async with sharing_world("sqlite", tmp_path, credit_url) as running:
        yield running


async def public(world: World, path: str = "/v1/catalog") -> httpx.Response:
    async with httpx.AsyncClient(base_url=world.url) as anonymous:
        return await anonymous.get(path)


async def test_items_of_every_attribute_with_chinese_aliases_and_labels(world: World) -> None:
    unconditional = await add_item(world, item_body("FGW-1", "无条件共享", "dishonest-debtor"))
    conditional = await add_item(world, item_body("FGW-2", "有条件", share_method="接口", update_frequency="每日"))
    refused = await add_item(
        world,
        item_body(
            "FGW-3",
            "不予共享",
            service=None,
            operation=None,
            legal_basis={"kind": "行政法规", "title": "《中华人民共和国政府信息公开条例》", "article": "第十四条"},
        ),
    )
    assert unconditional["share_attribute"] == "unconditional"
    assert (conditional["share_attribute"], conditional["share_method"], conditional["update_frequency"]) == (
        "conditional",
        "api",
        "daily",
    )
    assert conditional["share_method_label"] == "服务接口"
    assert conditional["conditions"] == {"scope": "本市惠企政策兑现", "purpose": "免申即享资格比对"}
    assert refused["legal_basis"]["kind"] == "administrative_regulation"
    assert refused["legal_basis"]["kind_label"] == "行政法规"
    assert conditional["data_items"][0]["level_label"] == "一般数据"

    listing = await public(world)
    assert listing.status_code == 200, listing.text
    codes = {item["code"]: item for item in listing.json()["items"]}
    assert set(codes) == {"FGW-1", "FGW-2", "FGW-3"}
    assert codes["FGW-3"]["share_attribute_label"] == "不予共享"
    assert codes["FGW-1"]["provider"] == CREDIT
    one = await public(world, f"/v1/catalog/{conditional['item_id']}")
    assert one.status_code == 200 and one.json()["code"] == "FGW-2"
    assert_problem(await public(world, "/v1/catalog/cat-nope"), 404, "item_unknown")
    only = await public(world, "/v1/catalog?provider=%E5%B8%82%E8%B4%A2%E6%94%BF%E5%B1%80")  # 市财政局
    assert only.json() == {"items": []}


BASIS = {"kind": "law", "title": "《中华人民共和国税收征收管理法》", "article": "第八条"}
UNKNOWN_FIELD = [{"name": "bank_account", "title": "账号", "type": "string", "level": "core"}]
UNKNOWN_LEVEL = [{"name": "uscc", "title": "代码", "type": "string", "level": "secret"}]


@pytest.mark.parametrize(
    ("attribute", "change", "status", "code", "field"),
    [
        ("not_shared", {"legal_basis": None}, 422, "legal_basis_missing", "legal_basis"),
        (
            "not_shared",
            {"legal_basis": {**BASIS, "kind": "部门规章"}},
            422,
            "legal_basis_kind_unknown",
            "legal_basis/kind",
        ),
        ("conditional", {"legal_basis": BASIS}, 422, "legal_basis_not_applicable", "legal_basis"),
        ("conditional", {"conditions": None}, 422, "conditions_missing", "conditions"),
        (
            "unconditional",
            {"conditions": {"scope": "a", "purpose": "b"}},
            422,
            "conditions_not_applicable",
            "conditions",
        ),
        ("sometimes", {}, 422, "share_attribute_unknown", "share_attribute"),
        ("conditional", {"service": "tax-bureau"}, 422, "unknown_service", "service"),
        ("conditional", {"operation": "everything"}, 422, "unknown_operation", "operation"),
        ("conditional", {"service": None}, 422, "delivery_missing", "service"),
        ("conditional", {"data_items": UNKNOWN_FIELD}, 422, "field_not_in_operation", "data_items/0/name"),
        ("conditional", {"data_items": UNKNOWN_LEVEL}, 422, "classification_unknown", "data_items/0/level"),
        ("conditional", {"provider": "市财政局"}, 403, "not_own_department", None),
        ("conditional", {"code": "bad code"}, 422, "field_invalid", "code"),
        ("conditional", {"name": None}, 422, "field_invalid", "name"),
        ("conditional", {"surprise": 1}, 422, "field_unknown", "surprise"),
    ],
)
async def test_invalid_items_are_refused_and_nothing_is_registered(
    world: World, attribute: str, change: dict, status: int, code: str, field: str | None
) -> None:
    body = item_body("FGW-9", attribute)
    body.update(change)
    # Every 422 of the catalog is one list of faults (一次性告知): `item_incomplete`, and a code per fault.
    top = "item_incomplete" if status == 422 else code
    body = assert_problem(await world.post("credit-officer", "/v1/catalog", body), status, top)
    if field is not None:
        assert [(error["field"], error["code"]) for error in body["errors"]] == [(field, code)], body
    assert (await public(world)).json() == {"items": []}
    [record] = await world.audit_records("catalog.add")
    assert (record["decision"], record["reason_code"], record["caller_id"]) == ("refused", top, "credit-officer")


async def test_every_fault_of_an_item_in_one_answer(world: World) -> None:
    body = item_body("FGW-9", "not_shared", legal_basis=None, conditions={"scope": "a", "purpose": "b"})
    body["data_items"].append({"name": "uscc", "title": "重复", "type": "string", "level": "general"})
    body["data_items"].append({"name": "bank_account", "title": "账号", "type": "string", "level": "core"})
    body["update_frequency"] = "hourly"
    del body["name"]
    answer = assert_problem(await world.post("credit-officer", "/v1/catalog", body), 422, "item_incomplete")
    assert sorted((error["field"], error["code"]) for error in answer["errors"]) == [
        ("conditions", "conditions_not_applicable"),
        ("data_items/3/name", "data_item_duplicate"),
        ("data_items/4/name", "field_not_in_operation"),
        ("legal_basis", "legal_basis_missing"),
        ("name", "field_missing"),
        ("update_frequency", "update_frequency_unknown"),
    ], answer
    assert answer["detail"].startswith("6 fault(s)")


async def test_who_registers(world: World) -> None:
    assert_problem(await world.post("platform", "/v1/catalog", item_body("P-1")), 403, "role_forbidden")
    missing = assert_problem(await world.post("admin", "/v1/catalog", item_body("A-1")), 422, "item_incomplete")
    assert [(error["field"], error["code"]) for error in missing["errors"]] == [("provider", "provider_missing")]
    by_admin = await add_item(world, item_body("A-1", provider=CREDIT), who="admin")
    assert (by_admin["provider"], by_admin["service_owner"]) == (CREDIT, CREDIT)
    await add_item(world, item_body("FGW-1"))
    assert_problem(await world.post("credit-head", "/v1/catalog", item_body("FGW-1")), 409, "item_code_exists")


async def test_unsigned_writes_are_refused(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.url) as anonymous:
        response = await anonymous.post("/v1/catalog", json=item_body("X-1"))
    assert_problem(response, 401, "signature_missing")


async def test_openapi_documents_the_workflow_with_examples(world: World) -> None:
    spec = (await public(world, "/openapi.json")).json()
    paths = spec["paths"]
    for path, method in [
        ("/v1/catalog", "get"),
        ("/v1/catalog", "post"),
        ("/v1/catalog/{item_id}", "get"),
        ("/v1/sharing-requests", "post"),
        ("/v1/sharing-requests", "get"),
        ("/v1/sharing-requests/{request_id}", "patch"),
        ("/v1/sharing-requests/{request_id}/endorse", "post"),
        ("/v1/sharing-requests/{request_id}/approve", "post"),
        ("/v1/sharing-requests/{request_id}/refuse", "post"),
        ("/v1/sharing-requests/{request_id}/return", "post"),
        ("/v1/sharing-requests/{request_id}/extend", "post"),
        ("/v1/sharing-requests/{request_id}/revoke", "post"),
        ("/v1/sharing-requests/{request_id}/deliver", "post"),
        ("/v1/grants", "get"),
        ("/v1/grants/{grant_id}", "get"),
        ("/v1/grants/{grant_id}/suspend", "post"),
        ("/v1/grants/{grant_id}/resume", "post"),
        ("/v1/grants/{grant_id}/register", "post"),
        ("/v1/grants/{grant_id}/register", "get"),
        ("/v1/calendar/deadline", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not documented"
    schemas = spec["components"]["schemas"]
    for name in (
        "CatalogItemIn",
        "SharingRequestIn",
        "ApproveIn",
        "RefuseIn",
        "ReturnIn",
        "ExtendIn",
        "GrantIn",
        "DeliverIn",
        "SuspendIn",
        "DataUseIn",
    ):
        assert schemas[name].get("examples"), f"{name} has no example"
    assert "fields" in schemas["ApproveIn"]["properties"], "partial approval is documented"
    assert "legal_basis" in schemas["RefuseIn"]["properties"], "a refusal's legal basis is documented"
    for name in ("DataUseRegister", "DeliveryOut", "GrantOut"):
        assert name in schemas, name
    body = paths["/v1/sharing-requests/{request_id}/approve"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/ApproveIn")
    assert "429" in paths["/v1/services/{service}/{operation}"]["post"]["responses"]
    kind = schemas["LegalBasis"]["properties"]["kind"]
    assert set(kind["enum"]) == {"law", "administrative_regulation", "state_council_decision"}


async def test_every_fault_of_a_change_in_one_answer(world: World) -> None:
    item = await add_item(world, item_body("FGW-10"))
    async with world.client("credit-officer") as client:
        changed = await client.patch(
            f"/v1/catalog/{item['item_id']}",
            json={"share_attribute": "not_shared", "update_frequency": "hourly", "colour": "red"},
        )
    answer = assert_problem(changed, 422, "item_incomplete")
    assert sorted((error["field"], error["code"]) for error in answer["errors"]) == [
        ("colour", "field_unknown"),
        ("legal_basis", "legal_basis_missing"),
        ("update_frequency", "update_frequency_unknown"),
    ], answer
    listed = (await public(world, f"/v1/catalog/{item['item_id']}")).json()
    assert (listed["share_attribute"], listed["update_frequency"]) == ("conditional", "daily"), "nothing changed"


async def test_a_change_cannot_empty_a_required_field(world: World) -> None:
    item = await add_item(world, item_body("FGW-11"))
    async with world.client("credit-officer") as client:
        changed = await client.patch(
            f"/v1/catalog/{item['item_id']}", json={"share_attribute": None, "name": None, "description": None}
        )
    answer = assert_problem(changed, 422, "item_incomplete")
    assert sorted((error["field"], error["code"]) for error in answer["errors"]) == [
        ("name", "field_invalid"),
        ("share_attribute", "field_invalid"),
    ], answer
    listed = (await public(world, f"/v1/catalog/{item['item_id']}")).json()
    assert listed["share_attribute"] == "conditional", "nothing changed"
