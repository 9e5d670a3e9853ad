"""The 条例 as written, over real HTTP on SQLite and on PostgreSQL + Redis: every fault of a filing in one answer,
partial approval, refusal with its legal basis, delivery within 20 working days, suspension, the register of use,
and invoke refusals that say what happened to the grant.

The workflow's clock is pinned before the 2025 National Day holiday (tests/helpers/sharing_world.py); calls run on the
real clock, as in production.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError

from gateway.audit.archive import export_records
from gateway.audit.files import iter_lines, verify_file
from gateway.sharing.obligations import register_entries
from gateway.storage.models import DataUseEntry, Grant
from tests.helpers.calls import assert_problem
from tests.helpers.sharing_world import (
    CHINA,
    CREDIT,
    DATA,
    REQUESTS,
    World,
    add_item,
    filed_and_submitted,
    invoke,
    item_body,
    real_now,
    request_body,
    sharing_world,
    state_of,
)


def faults(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((error["field"], error["code"]) for error in answer["errors"])


async def granted(world: World, code: str, **extra: Any) -> dict[str, Any]:
    """A 有条件 request filed, endorsed and approved as asked; its single grant goes to `platform`."""
    item = await add_item(world, item_body(code))
    request = await filed_and_submitted(world, item["item_id"], **extra)
    approved = await world.post("credit-officer", f"{REQUESTS}/{request['request_id']}/approve", {})
    assert approved.status_code == 200, approved.text
    return approved.json()


async def grant_of(world: World, who: str, grant_id: str) -> dict[str, Any]:
    response = await world.get(who, f"/v1/grants/{grant_id}")
    assert response.status_code == 200, response.text
    return response.json()


# --- 1. 一次性告知 on filing, on PATCH --------------------------------------------------------------------------


async def test_every_fault_of_a_filing_is_in_one_answer(world: World) -> None:
    item = await add_item(world, item_body("FGW-OB-0001"))
    # The five faults: no basis, a zero volume, two fields the item does not have, an unknown caller.
    body = request_body(item["item_id"], daily_volume=0, fields=["uscc", "bank_account", "phone"], callers=["nobody"])
    del body["basis"]
    answer = assert_problem(await world.post("data-officer", REQUESTS, body), 422, "request_incomplete")
    assert faults(answer) == [
        ("basis", "field_missing"),
        ("callers/0", "caller_unknown"),
        ("daily_volume", "quota_invalid"),
        ("fields/1", "field_not_in_item"),
        ("fields/2", "field_not_in_item"),
    ], answer
    assert answer["detail"].startswith("5 fault(s)")
    assert all(error["type"] for error in answer["errors"]), "each fault keeps its detailed type too"
    assert (await world.get("admin", REQUESTS)).json() == [], "nothing was filed"
    [record] = await world.audit_records("sharing.file")
    assert (record["decision"], record["reason_code"], record["purpose"]) == (
        "refused",
        "request_incomplete",
        "XM-2025-002",
    )

    # An unknown item and a form fault together: both named; the item's own checks cannot run without it.
    unknown = request_body("cat-missing", valid_to="tomorrow")
    answer = assert_problem(await world.post("data-officer", REQUESTS, unknown), 422, "request_incomplete")
    assert faults(answer) == [("item_id", "item_unknown"), ("valid_to", "field_invalid")]


async def test_every_fault_of_an_edit_is_in_one_answer(world: World) -> None:
    item = await add_item(world, item_body("FGW-OB-0002"))
    filed = await world.post("data-officer", REQUESTS, request_body(item["item_id"]))
    request_id = filed.json()["request_id"]
    async with world.client("data-officer") as client:
        patched = await client.patch(
            f"{REQUESTS}/{request_id}",
            json={
                "fields": ["uscc", "nope"],
                "scope": "",
                "callers": ["credit-officer"],
                "valid_to": (world.now - timedelta(days=1)).isoformat(),
                "colour": "red",
            },
        )
    answer = assert_problem(patched, 422, "request_incomplete")
    assert faults(answer) == [
        ("callers/0", "caller_not_in_department"),
        ("colour", "field_unknown"),
        ("fields/1", "field_not_in_item"),
        ("scope", "field_invalid"),
        ("valid_to", "validity_in_past"),
    ], answer
    assert (await state_of(world, request_id))["history"][-1]["action"] == "file", "nothing changed"


# --- 2. partial approval ---------------------------------------------------------------------------------------


async def test_partial_approval_narrows_fields_validity_and_volume(world: World) -> None:
    item = await add_item(world, item_body("FGW-OB-0003"))
    asked_until = real_now() + timedelta(days=30)
    request = await filed_and_submitted(
        world, item["item_id"], fields=["uscc", "listed", "entries"], valid_to=asked_until.isoformat()
    )
    path = f"{REQUESTS}/{request['request_id']}/approve"
    too_much = await world.post("credit-officer", path, {"fields": ["listed", "cases"], "daily_quota": 5000})
    assert faults(assert_problem(too_much, 422, "field_not_requested")) == [
        ("daily_quota", "quota_beyond_request"),
        ("fields/1", "field_not_requested"),
    ]
    assert (await state_of(world, request["request_id"]))["state"] == "submitted"

    until = asked_until - timedelta(days=10)
    approved = await world.post(
        "credit-officer", path, {"fields": ["listed", "uscc"], "valid_to": until.isoformat(), "daily_quota": 200}
    )
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["fields"] == ["listed", "uscc"], "the request is narrowed to what was approved"
    assert datetime.fromisoformat(body["valid_to"]) == until
    decision = body["decision"]
    assert decision["partial"] is True and decision["daily_quota"] == 200
    assert decision["narrowed"]["fields"] == {
        "requested": ["uscc", "listed", "entries"],
        "approved": ["listed", "uscc"],
    }
    assert decision["narrowed"]["daily_volume"] == {"requested": 1000, "approved": 200}
    approve_event = next(event for event in body["history"] if event["action"] == "approve")
    assert approve_event["changes"]["fields"] == {
        "before": ["uscc", "listed", "entries"],
        "after": ["listed", "uscc"],
    }
    assert approve_event["changes"]["valid_to"]["after"] == until.astimezone(UTC).isoformat()

    [ref] = body["grants"]
    grant = await grant_of(world, "admin", ref["grant_id"])
    assert (grant["fields"], grant["daily_quota"]) == (["listed", "uscc"], 200)
    assert datetime.fromisoformat(grant["valid_to"]) == until
    answer = await invoke(world, "abnormal-operation", "XM-2025-002")
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["data"]) == {"uscc", "listed"}, "the grant gives exactly what was approved"


# --- 3. refusal with its legal basis ----------------------------------------------------------------------------


async def test_refusal_cites_a_legal_basis_or_a_condition(world: World) -> None:
    item = await add_item(world, item_body("FGW-OB-0004"))
    request = await filed_and_submitted(world, item["item_id"])
    path = f"{REQUESTS}/{request['request_id']}/refuse"
    bare = assert_problem(
        await world.post("credit-officer", path, {"reasons": ["不便提供"]}), 422, "refusal_ground_missing"
    )
    assert "legal basis" in bare["detail"]
    wrong_kind = {"reasons": ["x"], "legal_basis": {"kind": "部门规章", "title": "《某办法》", "article": "第三条"}}
    assert_problem(await world.post("credit-officer", path, wrong_kind), 422, "legal_basis_kind_unknown")
    basis = {"kind": "法律", "title": "《中华人民共和国税收征收管理法》", "article": "第八条"}
    refused = await world.post("credit-officer", path, {"reasons": ["涉及纳税人商业秘密"], "legal_basis": basis})
    assert refused.status_code == 200, refused.text
    decision = refused.json()["decision"]
    assert decision["legal_basis"] == {
        "kind": "law",
        "kind_label": "法律",
        "title": "《中华人民共和国税收征收管理法》",
        "article": "第八条",
    }
    assert decision["condition_not_met"] is None and refused.json()["state"] == "refused"
    [record] = [r for r in await world.audit_records("sharing.refuse") if r["decision"] == "allowed"]
    assert (await world.opened_response(record))["decision"]["legal_basis"]["article"] == "第八条"


# --- 4. delivery within 20 working days ---------------------------------------------------------------------------


async def test_delivery_is_due_in_20_working_days_and_overdue_for_the_provider(world: World) -> None:
    body = await granted(world, "FGW-OB-0005")
    request_id, grant_id = body["request_id"], body["grants"][0]["grant_id"]
    # Approved Tue 30 Sep 2025: 1–8 Oct off, Sat 11 Oct worked; the 20th working day is Tue 4 Nov.
    assert body["decision"]["delivery_due"] == "2025-11-04"
    assert body["delivery"] == {
        "state": "pending",
        "state_label": "待交付",
        "due": "2025-11-04",
        "provisional": False,
        "delivered_at": None,
    }
    grant = await grant_of(world, "credit-officer", grant_id)
    assert (grant["delivery_state"], grant["delivery_due"]) == ("pending", "2025-11-04")

    world.set_clock(datetime(2025, 11, 4, 23, 59, tzinfo=CHINA))
    assert (await state_of(world, request_id))["delivery"]["state"] == "pending", "the due day is not over yet"
    world.set_clock(datetime(2025, 11, 5, 0, 1, tzinfo=CHINA))
    assert (await state_of(world, request_id))["delivery"]["state"] == "overdue"
    overdue = await world.get("credit-officer", REQUESTS, delivery="overdue")
    assert [entry["request_id"] for entry in overdue.json()] == [request_id]
    assert (await grant_of(world, "credit-officer", grant_id))["delivery_state"] == "overdue"
    # The sweep records it once, as `system`, with notice to the provider.
    [swept] = await world.sweep()
    assert swept.history is not None and swept.history[-1].action == "delivery_overdue"
    assert swept.history[-1].note == {
        "grant_ids": [grant_id],
        "due": "2025-11-04",
        "on_time": False,
        "notice_to": CREDIT,
    }
    assert await world.sweep() == [], "recorded once"
    [late] = await world.audit_records("sharing.delivery_overdue")
    assert (late["caller_id"], late["grant_id"]) == ("system", grant_id)

    assert_problem(await world.post("data-officer", f"{REQUESTS}/{request_id}/deliver"), 403, "not_provider")
    delivered = await world.post("credit-head", f"{REQUESTS}/{request_id}/deliver", {"note": "接口已开通"})
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["delivery"]["state"] == "delivered"
    event = delivered.json()["history"][-1]
    assert (event["action"], event["actor"]) == ("deliver", "credit-head")
    assert event["note"]["on_time"] is False and event["note"]["due"] == "2025-11-04"
    grant = await grant_of(world, "data-officer", grant_id)
    assert (grant["delivery_state"], grant["delivered_by"], grant["delivery_note"]) == (
        "delivered",
        "credit-head",
        "接口已开通",
    )
    assert_problem(await world.post("credit-head", f"{REQUESTS}/{request_id}/deliver"), 422, "already_delivered")
    [record] = [r for r in await world.audit_records("sharing.deliver") if r["decision"] == "allowed"]
    assert (record["caller_id"], record["grant_id"]) == ("credit-head", grant_id)
    assert (await world.get("credit-officer", REQUESTS, delivery="overdue")).json() == []


async def test_a_delivery_day_in_an_unloaded_year_is_provisional_until_the_import(world: World) -> None:
    # Approved Thu 24 Dec 2026: the 20 working days reach into 2027, which chinese-calendar does not know.
    world.set_clock(datetime(2026, 12, 24, 10, 0, tzinfo=CHINA))
    body = await granted(world, "FGW-OB-0012")
    grant_id = body["grants"][0]["grant_id"]
    # Provisional (weekends, 1 Jan off): Dec 25, 28–31, Jan 4–8, 11–15, 18–22 → Fri 22 Jan 2027.
    assert (body["decision"]["delivery_due"], body["decision"]["delivery_due_provisional"]) == ("2027-01-22", True)
    assert (body["delivery"]["due"], body["delivery"]["provisional"]) == ("2027-01-22", True)
    assert (await grant_of(world, "admin", grant_id))["delivery_due_provisional"] is True
    assert await world.sweep() == [], "nothing to recount before an import"

    fixture = Path(__file__).parent / "fixtures" / "calendar-2027.TEST-FIXTURE.yaml"
    async with world.client("admin") as client:
        imported = await client.post(
            "/v1/calendar/schedules", content=fixture.read_bytes(), headers={"content-type": "application/yaml"}
        )
    assert imported.status_code == 201, imported.text
    # The fixture: 1–4 Jan off, Sat 9 Jan worked: Dec 25, 28–31, Jan 5–9, 11–15, 18–22 → still 22 Jan, now firm.
    [recounted] = await world.sweep()
    assert recounted.history is not None
    event = recounted.history[-1]
    assert (event.action, event.actor) == ("recompute_delivery_due", "system")
    assert event.note is not None
    assert (event.note["delivery_due_before"], event.note["delivery_due"]) == ("2027-01-22", "2027-01-22")
    assert event.note["delivery_due_provisional"] is False and "2027: imported" in event.note["calendar"]
    grant = await grant_of(world, "admin", grant_id)
    assert (grant["delivery_due"], grant["delivery_due_provisional"]) == ("2027-01-22", False)
    assert await world.sweep() == [], "counted once"
    [record] = await world.audit_records("sharing.recompute_delivery_due")
    assert (record["caller_id"], record["grant_id"]) == ("system", grant_id)


async def test_first_successful_call_delivers_the_grant(world: World) -> None:
    body = await granted(world, "FGW-OB-0006")
    grant_id = body["grants"][0]["grant_id"]
    refused = await invoke(world, "abnormal-operation", "XM-2025-002", "91350100M000100Y4Z")
    assert refused.status_code == 422
    await world.gw.app.state.sharing.settle()
    assert (await grant_of(world, "admin", grant_id))["delivery_state"] == "pending", "a failed call proves nothing"

    for _ in range(3):
        assert (await invoke(world, "abnormal-operation", "XM-2025-002")).status_code == 200
    await world.gw.app.state.sharing.settle()
    grant = await grant_of(world, "credit-officer", grant_id)
    assert (grant["delivery_state"], grant["delivered_by"]) == ("delivered", "first_use")
    request = await state_of(world, body["request_id"])
    deliveries = [event for event in request["history"] if event["action"] == "deliver"]
    assert [(event["actor"], event["note"]["via"]) for event in deliveries] == [("system", "first_use")]
    assert request["delivery"]["state"] == "delivered"
    [record] = await world.audit_records("sharing.deliver")
    assert (record["caller_id"], record["grant_id"]) == ("system", grant_id)


# --- 4. suspension and resumption; 5. refusal codes on the invoke path --------------------------------------------


async def test_suspension_refuses_calls_until_resumed_and_is_not_a_revocation(world: World) -> None:
    body = await granted(world, "FGW-OB-0007")
    request_id, grant_id = body["request_id"], body["grants"][0]["grant_id"]
    assert (await invoke(world, "abnormal-operation", "XM-2025-002")).status_code == 200
    await world.gw.app.state.sharing.settle()
    suspend = f"/v1/grants/{grant_id}/suspend"

    assert_problem(await world.post("data-officer", suspend, {"reason": "自查"}), 403, "not_provider")
    assert_problem(await world.post("credit-officer", suspend, {}), 422, "validation_failed")
    suspended = await world.post("credit-officer", suspend, {"reason": "发现超出授权范围使用数据"})
    assert suspended.status_code == 200, suspended.text
    assert (suspended.json()["status"], suspended.json()["suspended_by"]) == ("suspended", "credit-officer")
    refusal = assert_problem(await invoke(world, "abnormal-operation", "XM-2025-002"), 403, "grant_suspended")
    assert grant_id in refusal["detail"] and "超出授权范围" in refusal["detail"]
    assert_problem(await world.post("admin", suspend, {"reason": "again"}), 422, "already_suspended")
    assert (await state_of(world, request_id))["state"] == "granted", "a suspension does not end the request"

    resumed = await world.post("admin", f"/v1/grants/{grant_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active" and resumed.json()["suspended_at"] is None
    assert (await invoke(world, "abnormal-operation", "XM-2025-002")).status_code == 200
    assert_problem(await world.post("admin", f"/v1/grants/{grant_id}/resume"), 422, "not_suspended")

    history = (await state_of(world, request_id))["history"]
    suspension = [event for event in history if event["action"] in ("suspend", "resume")]
    assert [(event["action"], event["actor"]) for event in suspension] == [
        ("suspend", "credit-officer"),
        ("resume", "admin"),
    ]
    assert suspension[1]["note"]["suspend_reason"] == "发现超出授权范围使用数据"
    for event, actor in [("grant.suspend", "credit-officer"), ("sharing.suspend", "credit-officer")]:
        records = [r for r in await world.audit_records(event) if r["decision"] == "allowed"]
        assert [(r["caller_id"], r["grant_id"]) for r in records] == [(actor, grant_id)], event
    refused_calls = [r for r in await world.audit_records("service.invoke") if r["decision"] == "refused"]
    assert [(r["reason_code"], r["grant_id"]) for r in refused_calls] == [("grant_suspended", grant_id)]

    # Suspended, then revoked: the call says revoked, and a revoked grant cannot be resumed.
    await world.post("credit-officer", suspend, {"reason": "再次违规"})
    await world.post("credit-officer", f"{REQUESTS}/{request_id}/revoke", {"reason": "违规使用"})
    assert_problem(await invoke(world, "abnormal-operation", "XM-2025-002"), 403, "grant_revoked")
    assert_problem(await world.post("admin", f"/v1/grants/{grant_id}/resume"), 422, "invalid_state")


async def test_an_expired_grant_says_so_and_other_purposes_still_say_not_granted(world: World) -> None:
    body = await granted(world, "FGW-OB-0008")
    grant_id = body["grants"][0]["grant_id"]
    async with world.gw.runtime.sessions() as session:
        ended = real_now() - timedelta(minutes=1)
        await session.execute(
            update(Grant).where(Grant.grant_id == grant_id).values(valid_from=ended - timedelta(days=1), valid_to=ended)
        )
        await session.commit()
    world.gw.runtime.directory.invalidate()
    expired = assert_problem(await invoke(world, "abnormal-operation", "XM-2025-002"), 403, "grant_expired")
    assert grant_id in expired["detail"]
    assert_problem(await invoke(world, "abnormal-operation", "XM-2025-777"), 403, "no_grant")
    assert_problem(await invoke(world, "dishonest-debtor", "XM-2025-002"), 403, "purpose_not_granted")


# --- 4. the register of use, storage and destruction --------------------------------------------------------------


async def test_register_of_use_storage_and_destruction_is_kept_and_exported(world: World, tmp_path: Path) -> None:
    body = await granted(world, "FGW-OB-0009")
    grant_id = body["grants"][0]["grant_id"]
    register = f"/v1/grants/{grant_id}/register"
    entries = [
        {"kind": "use", "description": "2025年度研发补助资格比对", "volume": 30000},
        {"kind": "存储", "description": "比对结果存入平台库", "location": "政务云 t_match_result"},
        {"kind": "destruction", "description": "兑现完成，比对结果已删除", "location": "t_match_result"},
    ]
    for number, entry in enumerate(entries):
        world.set_clock(world.now + timedelta(hours=1))
        added = await world.post("data-officer", register, entry)
        assert added.status_code == 201, added.text
        assert added.json()["keep_until"] == "2028-09-30", "kept at least 3 years"
        assert added.json()["department"] == DATA and added.json()["recorded_by"] == "data-officer", number
    assert_problem(await world.post("credit-officer", register, entries[0]), 403, "not_holder")
    assert_problem(
        await world.post("data-officer", register, {"kind": "lend", "description": "x"}), 422, "data_use_kind_unknown"
    )
    future = {"kind": "use", "description": "x", "occurred_at": (world.now + timedelta(days=1)).isoformat()}
    assert_problem(await world.post("data-officer", register, future), 422, "occurred_in_future")
    # The schema says integer: JSON's false is not 0 records, nor "30" a count (a fuzzer found false accepted).
    for volume in (False, "30", 1.5):
        wrong = await world.post("data-officer", register, {"kind": "use", "description": "x", "volume": volume})
        assert_problem(wrong, 422, "validation_failed")
        assert wrong.json()["errors"][0]["field"] == "volume", wrong.text

    for who in ("data-head", "credit-officer", "officer", "admin"):
        read = await world.get(who, register)
        assert read.status_code == 200, (who, read.text)
        assert [entry["kind_label"] for entry in read.json()["entries"]] == ["使用", "存储", "销毁"], who
        assert read.json()["state"] == "destroyed"
    assert_problem(await world.get("finance-officer", register), 404, "grant_unknown")
    assert len([r for r in await world.audit_records("grant.register.add") if r["decision"] == "allowed"]) == 3

    # Kept: the database itself refuses to change an entry, or to delete one before its keep_until.
    for statement in (
        update(DataUseEntry).values(description="改写"),
        delete(DataUseEntry).where(DataUseEntry.keep_until > date(2000, 1, 1)),
    ):
        async with world.gw.runtime.sessions() as session:
            with pytest.raises(DBAPIError):
                await session.execute(statement)
                await session.commit()
    async with world.gw.runtime.sessions() as session:
        count = (await session.execute(text("SELECT count(*) FROM data_use_entries"))).scalar_one()
    assert count == 3

    # Exported with the audit: the entries recorded in the range, and the file still verifies.
    path = tmp_path / "export.jsonl"
    start = datetime(2025, 9, 30, tzinfo=UTC)
    from_ms, to_ms = int(start.timestamp() * 1000), int((real_now() + timedelta(minutes=1)).timestamp() * 1000)
    register = await register_entries(world.gw.runtime.engine, from_ms, to_ms)
    await export_records(world.gw.runtime.engine, path, from_ms=from_ms, to_ms=to_ms, register=register)
    lines = [item for _, item in iter_lines(path)]
    assert lines[0]["register_entries"] == 3
    exported = [item for item in lines if item["type"] == "register"]
    assert [(item["grant_id"], item["kind"]) for item in exported] == [
        (grant_id, "use"),
        (grant_id, "storage"),
        (grant_id, "destruction"),
    ]
    assert any(item["type"] == "record" for item in lines)
    assert all(report.ok for report in verify_file(path, None))


async def test_grant_visibility_for_duties(world: World) -> None:
    body = await granted(world, "FGW-OB-0010")
    grant_id = body["grants"][0]["grant_id"]
    assert_problem(
        await world.post("platform", f"/v1/grants/{grant_id}/suspend", {"reason": "x"}), 403, "role_forbidden"
    )
    assert_problem(
        await world.post("finance-officer", f"/v1/grants/{grant_id}/suspend", {"reason": "x"}), 403, "not_provider"
    )
    assert_problem(await world.post("admin", "/v1/grants/g-nope/suspend", {"reason": "x"}), 404, "grant_unknown")
    # An admin's own grant (no request): only an admin suspends it, and nothing is due for delivery.
    admin_grant = world.gw.grant_id
    assert_problem(
        await world.post("credit-officer", f"/v1/grants/{admin_grant}/suspend", {"reason": "x"}), 403, "not_provider"
    )
    assert (await grant_of(world, "admin", admin_grant))["delivery_state"] == "not_applicable"
    listing = {grant["grant_id"]: grant for grant in (await world.get("credit-officer", "/v1/grants")).json()}
    assert admin_grant not in listing, "a provider sees the grants on its items, not others'"
    assert (listing[grant_id]["status"], listing[grant_id]["delivery_state"]) == ("active", "pending")


# --- the CLI: suspend and resume as the operator; the register in `audit export` ----------------------------------


@pytest.mark.slow
async def test_cli_suspends_resumes_and_exports_the_register(tmp_path: Path, credit_url: str) -> None:
    from tests.helpers.processes import run_cli

    async with sharing_world("sqlite", tmp_path, credit_url) as world:
        body = await granted(world, "FGW-OB-0011")
        grant_id = body["grants"][0]["grant_id"]
        entry = {"kind": "use", "description": "资格比对"}
        assert (await world.post("data-officer", f"/v1/grants/{grant_id}/register", entry)).status_code == 201

        suspended = run_cli("grants", "suspend", grant_id, "--reason", "发现超范围使用", data_dir=tmp_path)
        assert f"grant {grant_id} suspended at" in suspended.stdout and "发现超范围使用" in suspended.stdout
        listed = run_cli("grants", "list", data_dir=tmp_path).stdout
        [line] = [line for line in listed.splitlines() if line.startswith(grant_id)]
        # The CLI runs on the real clock: approved on the pinned 30 Sep 2025, undelivered, it is long overdue.
        assert "suspended" in line and "delivery: overdue" in line
        again = run_cli("grants", "suspend", grant_id, "--reason", "x", data_dir=tmp_path, check=False)
        assert again.returncode == 1 and "already_suspended" in again.stderr
        empty = run_cli("grants", "suspend", grant_id, "--reason", "", data_dir=tmp_path, check=False)
        assert empty.returncode == 2 and empty.stderr == "error: reason: String should have at least 1 character\n"
        world.gw.runtime.directory.invalidate()  # another process wrote it: this node would see it within 1 s
        assert_problem(await invoke(world, "abnormal-operation", "XM-2025-002"), 403, "grant_suspended")
        history = (await state_of(world, body["request_id"]))["history"]
        assert (history[-1]["action"], history[-1]["actor"]) == ("suspend", "operator")

        resumed = run_cli("grants", "resume", grant_id, "--reason", "核查无误", data_dir=tmp_path)
        assert f"grant {grant_id} resumed (active)" in resumed.stdout
        world.gw.runtime.directory.invalidate()
        assert (await invoke(world, "abnormal-operation", "XM-2025-002")).status_code == 200

        export = tmp_path / "audit.jsonl"
        exported = run_cli(
            "audit", "export", "--from", "2025-09-01", "--to", "2030-01-01", str(export), data_dir=tmp_path
        )
        assert "register of use, storage and destruction: 1 entries" in exported.stdout
        register = [item for _, item in iter_lines(export) if item["type"] == "register"]
        assert [(item["grant_id"], item["kind"], item["description"]) for item in register] == [
            (grant_id, "use", "资格比对")
        ]
