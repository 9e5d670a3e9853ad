"""The 共享为常态 workflow end to end over real HTTP, on SQLite and on PostgreSQL + Redis.

The workflow's clock is pinned to the days before the 2025 National Day holiday, so deadlines cross it;
the invoke path runs on the real clock, as it does in production.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from simulators.enterprises import DEMO_USCC
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
    state_of,
)


async def test_conditional_request_from_filing_to_revocation(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0002"))
    assert (item["provider"], item["share_attribute_label"]) == (CREDIT, "有条件共享")

    filed = await world.post("data-officer", REQUESTS, request_body(item["item_id"]))
    assert filed.status_code == 201, filed.text
    request_id = filed.json()["request_id"]
    assert filed.json()["state"] == "draft"
    assert filed.json()["requester_department"] == DATA

    # The head's approval must come from another person of the requesting department.
    assert_problem(await world.post("data-officer", f"{REQUESTS}/{request_id}/endorse"), 403, "endorser_is_filer")
    assert_problem(await world.post("credit-head", f"{REQUESTS}/{request_id}/endorse"), 403, "not_requester")
    submitted = await world.post("data-head", f"{REQUESTS}/{request_id}/endorse", {"note": "同意报送"})
    assert submitted.status_code == 200, submitted.text
    body = submitted.json()
    assert (body["state"], body["endorsed_by"]) == ("submitted", "data-head")
    # 30 Sep 2025 + 10 working days: 1–8 Oct are off, Sat 11 Oct is a 调休 working day.
    assert body["due_date"] == "2025-10-21"

    # Another department cannot decide; nothing changes.
    assert_problem(await world.post("finance-officer", f"{REQUESTS}/{request_id}/approve", {}), 403, "not_provider")
    assert_problem(await world.post("coordinator", f"{REQUESTS}/{request_id}/approve", {}), 403, "not_escalated")
    assert_problem(await world.post("officer", f"{REQUESTS}/{request_id}/approve", {}), 403, "not_provider")
    assert (await state_of(world, request_id))["state"] == "submitted"

    # 退回补正 lists every missing item at once; a second return may not add new ones.
    returned = await world.post(
        "credit-officer",
        f"{REQUESTS}/{request_id}/return",
        {"missing": [{"item": "basis", "reason": "请补充文号"}, {"item": "scope", "reason": "请说明使用系统"}]},
    )
    assert returned.status_code == 200, returned.text
    assert returned.json()["state"] == "returned"
    assert returned.json()["returned_items"] == ["basis", "scope"]

    world.set_clock(datetime(2025, 10, 9, 9, 0, tzinfo=CHINA))
    async with world.client("data-officer") as client:
        patched = await client.patch(
            f"{REQUESTS}/{request_id}", json={"basis": "《厦门市惠企政策免申即享工作方案》厦府办〔2021〕1号"}
        )
    assert patched.status_code == 200, patched.text
    assert patched.json()["state"] == "returned"
    resubmitted = await world.post("data-head", f"{REQUESTS}/{request_id}/endorse")
    assert resubmitted.status_code == 200, resubmitted.text
    # Counting restarts on resubmission: from Thu 9 Oct, Sat 11 Oct counts, Sun 12 Oct does not.
    assert resubmitted.json()["due_date"] == "2025-10-22"
    again = await world.post(
        "credit-officer", f"{REQUESTS}/{request_id}/return", {"missing": [{"item": "callers", "reason": "?"}]}
    )
    assert_problem(again, 422, "return_new_items")

    # One extension, of at most 10 working days, with a reason the requester sees.
    assert_problem(
        await world.post("credit-officer", f"{REQUESTS}/{request_id}/extend", {"working_days": 11, "reason": "x"}),
        422,
        "extension_too_long",
    )
    extended = await world.post(
        "credit-officer", f"{REQUESTS}/{request_id}/extend", {"working_days": 5, "reason": "需征求主管部门意见"}
    )
    assert extended.status_code == 200, extended.text
    assert extended.json()["due_date"] == "2025-10-29"
    seen_by_requester = await world.get("data-officer", f"{REQUESTS}/{request_id}")
    assert seen_by_requester.json()["extension_reason"] == "需征求主管部门意见"
    assert_problem(
        await world.post("credit-officer", f"{REQUESTS}/{request_id}/extend", {"working_days": 1, "reason": "再延"}),
        422,
        "already_extended",
    )

    # Quota ≤ 0 is refused and changes nothing; then the approval creates the grant.
    assert_problem(
        await world.post("credit-head", f"{REQUESTS}/{request_id}/approve", {"daily_quota": 0}), 422, "quota_invalid"
    )
    assert (await state_of(world, request_id))["state"] == "submitted"
    approved = await world.post(
        "credit-head", f"{REQUESTS}/{request_id}/approve", {"daily_quota": 3, "rate_limit": "100/second"}
    )
    assert approved.status_code == 200, approved.text
    granted = approved.json()
    assert granted["state"] == "granted"
    assert granted["decision"]["daily_quota"] == 3
    [grant] = granted["grants"]
    assert grant["caller_id"] == "platform"

    # A second decision on a decided request: refused, nothing changed.
    refuse = {"reasons": ["不符合条件"], "condition_not_met": {"condition": "scope", "explanation": "范围不符"}}
    assert_problem(
        await world.post("credit-officer", f"{REQUESTS}/{request_id}/refuse", refuse), 422, "already_decided"
    )
    assert_problem(await world.post("credit-officer", f"{REQUESTS}/{request_id}/approve", {}), 422, "already_decided")
    assert (await state_of(world, request_id))["state"] == "granted"

    # The grant works on the invoke path: purpose, validity, fields, quota.
    first = await invoke(world, "abnormal-operation", "XM-2025-002")
    assert first.status_code == 200, first.text
    assert set(first.json()["data"]) <= {"uscc", "listed"}, "entries was not requested, so it never leaves"
    assert "entries" not in first.json()["data"]
    assert first.json()["meta"]["grant_id"] == grant["grant_id"]
    await world.gw.app.state.sharing.settle()  # the first successful call records the delivery, in the background
    assert_problem(await invoke(world, "abnormal-operation", "XM-2025-999"), 403, "purpose_not_granted")
    for _ in range(2):
        assert (await invoke(world, "abnormal-operation", "XM-2025-002", DEMO_USCC)).status_code == 200
    exhausted = assert_problem(await invoke(world, "abnormal-operation", "XM-2025-002"), 429, "quota_exhausted")
    assert "3" in exhausted["detail"]

    # The public catalog shows which department holds a grant for which purpose, and nothing about callers.
    async with httpx.AsyncClient(base_url=world.url) as anonymous:
        public = await anonymous.get("/v1/catalog")
    assert public.status_code == 200, public.text
    listed = next(entry for entry in public.json()["items"] if entry["item_id"] == item["item_id"])
    assert listed["grants"] == [{"department": DATA, "purposes": [{"code": "XM-2025-002", "name": "企业研发费用补助"}]}]
    assert "platform" not in public.text and grant["grant_id"] not in public.text

    # Revocation by the provider holds on the next call.
    revoked = await world.post("credit-officer", f"{REQUESTS}/{request_id}/revoke", {"reason": "超范围使用"})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked"
    assert revoked.json()["grants"][0]["revoked_at"] is not None
    assert_problem(await invoke(world, "abnormal-operation", "XM-2025-002"), 403, "grant_revoked")
    assert_problem(
        await world.post("credit-officer", f"{REQUESTS}/{request_id}/revoke", {"reason": "again"}), 422, "invalid_state"
    )

    history = (await state_of(world, request_id))["history"]
    assert [(event["action"], event["actor"]) for event in history] == [
        ("file", "data-officer"),
        ("endorse", "data-head"),
        ("return", "credit-officer"),
        ("update", "data-officer"),
        ("endorse", "data-head"),
        ("extend", "credit-officer"),
        ("approve", "credit-head"),
        ("grant", "credit-head"),
        ("deliver", "system"),
        ("revoke", "credit-officer"),
    ]
    approve_event = history[6]
    assert approve_event["changes"]["state"] == {"before": "submitted", "after": "approved"}
    assert approve_event["changes"]["decided_by"] == {"before": None, "after": "credit-head"}


async def test_every_transition_is_audited_with_actor_before_and_after(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0003"))
    request = await filed_and_submitted(world, item["item_id"])
    await world.post("credit-officer", f"{REQUESTS}/{request['request_id']}/approve", {"daily_quota": 10})
    refused_attempt = await world.post(
        "finance-officer", f"{REQUESTS}/{request['request_id']}/refuse", {"reasons": ["x"]}
    )
    assert_problem(refused_attempt, 403, "not_provider")

    for event, actor, before, after in [
        ("sharing.file", "data-officer", None, "draft"),
        ("sharing.endorse", "data-head", "draft", "submitted"),
        ("sharing.approve", "credit-officer", "approved", "granted"),
    ]:
        [record] = [r for r in await world.audit_records(event) if r["decision"] == "allowed"]
        assert record["caller_id"] == actor
        assert record["department"] in (DATA, CREDIT)
        assert record["purpose"] == "XM-2025-002"
        assert (record["service"], record["operation"]) == ("credit", "abnormal-operation")
        sealed = await world.opened_response(record)
        last = sealed["history"][-1]
        assert last["actor"] == actor
        assert (last["from_state"], last["to_state"]) == (before, after)
        assert last["changes"]["state"]["after"] == after
    approve = next(r for r in await world.audit_records("sharing.approve") if r["decision"] == "allowed")
    assert approve["grant_id"] == (await world.opened_response(approve))["grants"][0]["grant_id"]
    [refusal] = [r for r in await world.audit_records("sharing.refuse")]
    assert (refusal["decision"], refusal["reason_code"], refusal["caller_id"]) == (
        "refused",
        "not_provider",
        "finance-officer",
    )


async def test_unconditional_item_is_approved_on_submission(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0001", "无条件", "dishonest-debtor"))
    assert item["share_attribute"] == "unconditional"
    request = await filed_and_submitted(
        world, item["item_id"], fields=["listed"], purpose={"code": "XM-2025-003", "name": "稳岗补贴"}
    )
    assert request["state"] == "granted"
    assert request["due_date"] is None
    actions = [(event["action"], event["actor"]) for event in request["history"]]
    assert actions == [("file", "data-officer"), ("endorse", "data-head"), ("approve", "system"), ("grant", "system")]
    assert request["decision"]["rule"].startswith("无条件共享")
    answer = await invoke(world, "dishonest-debtor", "XM-2025-003")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == {"listed": True}


async def test_refusal_of_a_conditional_item_names_the_condition_not_met(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0004"))
    request = await filed_and_submitted(world, item["item_id"])
    path = f"{REQUESTS}/{request['request_id']}/refuse"
    assert_problem(await world.post("credit-officer", path, {"reasons": ["不符合"]}), 422, "refusal_ground_missing")
    assert_problem(await world.post("credit-officer", path, {"reasons": []}), 422, "validation_failed")
    refused = await world.post(
        "credit-officer",
        path,
        {"reasons": ["用途超出共享条件"], "condition_not_met": {"condition": "purpose", "explanation": "仅限资格比对"}},
    )
    assert refused.status_code == 200, refused.text
    body = refused.json()
    assert body["state"] == "refused"
    assert body["decision"]["condition_not_met"]["condition"] == "purpose"
    assert body["grants"] == []
    assert_problem(
        await world.post("credit-officer", f"{REQUESTS}/{request['request_id']}/approve", {}), 422, "already_decided"
    )


async def test_overdue_request_is_escalated_to_a_coordinator(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0005"))
    request = await filed_and_submitted(world, item["item_id"])
    other = await filed_and_submitted(world, item["item_id"], purpose={"code": "XM-2025-004", "name": "其他"})
    request_id = request["request_id"]
    assert request["due_date"] == "2025-10-21"
    assert_problem(await world.post("coordinator", f"{REQUESTS}/{request_id}/approve", {}), 403, "not_escalated")

    world.set_clock(datetime(2025, 10, 21, 23, 59, tzinfo=CHINA))
    assert (await state_of(world, request_id))["overdue"] is False, "the due day is not over yet"
    world.set_clock(datetime(2025, 10, 22, 0, 1, tzinfo=CHINA))
    assert (await state_of(world, request_id))["overdue"] is True
    assert_problem(
        await world.post("credit-officer", f"{REQUESTS}/{request_id}/extend", {"working_days": 2, "reason": "晚了"}),
        422,
        "deadline_passed",
    )

    swept = await world.sweep()
    assert {entry.request_id for entry in swept} == {request_id, other["request_id"]}
    assert await world.sweep() == [], "a transition happens once"
    escalated = await world.get("coordinator", REQUESTS, escalated="true")
    assert {entry["request_id"] for entry in escalated.json()} == {request_id, other["request_id"]}
    records = await world.audit_records("sharing.escalate")
    assert len(records) == 2 and {r["caller_id"] for r in records} == {"system"}

    refused = await world.post(
        "coordinator",
        f"{REQUESTS}/{request_id}/refuse",
        {"reasons": ["超期未答复，经协调不予共享"], "condition_not_met": {"condition": "scope", "explanation": "范围"}},
    )
    assert refused.status_code == 200, refused.text
    assert (refused.json()["state"], refused.json()["decided_by"]) == ("refused", "coordinator")
    # The provider may still answer the other one itself.
    approved = await world.post("credit-officer", f"{REQUESTS}/{other['request_id']}/approve", {})
    assert approved.status_code == 200 and approved.json()["state"] == "granted"


async def test_overdue_requests_can_be_approved_by_default(world: World) -> None:
    world.gw.app.state.sharing.overdue_action = "approve"
    item = await add_item(world, item_body("FGW-XY-0006"))
    request = await filed_and_submitted(world, item["item_id"])
    world.set_clock(datetime(2025, 10, 23, 9, 0, tzinfo=CHINA))
    [swept] = await world.sweep()
    assert swept.state == "granted"
    assert swept.decision is not None and "approved by default" in swept.decision["rule"]
    assert (await state_of(world, request["request_id"]))["grants"][0]["caller_id"] == "platform"


async def test_future_start_is_approved_then_granted_then_expired(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0007"))
    start = world.now + timedelta(days=3)
    end = real_now() + timedelta(days=30)
    request = await filed_and_submitted(world, item["item_id"], valid_from=start.isoformat(), valid_to=end.isoformat())
    too_short = {"valid_to": (start - timedelta(days=1)).isoformat()}
    assert_problem(
        await world.post("credit-officer", f"{REQUESTS}/{request['request_id']}/approve", too_short),
        422,
        "validity_empty",
    )
    approved = await world.post("credit-officer", f"{REQUESTS}/{request['request_id']}/approve", {})
    assert approved.json()["state"] == "approved", approved.text
    world.set_clock(start + timedelta(minutes=1))
    assert (await state_of(world, request["request_id"]))["state"] == "granted", "shown as it is now"
    [started] = await world.sweep()
    assert started.state == "granted" and started.history[-1].action == "grant"
    world.set_clock(end + timedelta(seconds=1))
    [ended] = await world.sweep()
    assert ended.state == "expired" and ended.history[-1].actor == "system"
    assert_problem(
        await world.post("credit-officer", f"{REQUESTS}/{request['request_id']}/revoke", {"reason": "x"}),
        422,
        "invalid_state",
    )


async def test_bad_requests_are_refused_and_change_nothing(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0008"))
    secret = await add_item(world, item_body("SWJ-0009", "not_shared", service=None, operation=None))
    cases = [
        (request_body(item["item_id"], fields=["uscc", "bank_account"]), "field_not_in_item", "fields/1"),
        ({k: v for k, v in request_body(item["item_id"]).items() if k != "purpose"}, "field_missing", "purpose"),
        (
            request_body(item["item_id"], valid_to=(world.now - timedelta(days=1)).isoformat()),
            "validity_in_past",
            "valid_to",
        ),
        (request_body(item["item_id"], daily_volume=0), "quota_invalid", "daily_volume"),
        (request_body(item["item_id"], callers=["credit-officer"]), "caller_not_in_department", "callers/0"),
        (request_body(item["item_id"], callers=["nobody"]), "caller_unknown", "callers/0"),
        (request_body(secret["item_id"]), "item_not_shared", "item_id"),
        (request_body("cat-missing"), "item_unknown", "item_id"),
    ]
    for body, code, field in cases:
        response = await world.post("data-officer", REQUESTS, body)
        found = assert_problem(response, 422, "request_incomplete")
        assert [(error["field"], error["code"]) for error in found["errors"]] == [(field, code)], found
    assert_problem(await world.post("platform", REQUESTS, request_body(item["item_id"])), 403, "role_forbidden")
    assert (await world.get("admin", REQUESTS)).json() == [], "no request was created"

    both = await world.post("data-officer", REQUESTS, request_body(item["item_id"], fields=["x"], callers=["nobody"]))
    assert [error["code"] for error in assert_problem(both, 422, "request_incomplete")["errors"]] == [
        "field_not_in_item",
        "caller_unknown",
    ], "every fault is named at once"


async def test_visibility_by_role(world: World) -> None:
    item = await add_item(world, item_body("FGW-XY-0010"))
    request = await filed_and_submitted(world, item["item_id"])
    request_id = request["request_id"]
    for who, sees in [
        ("data-officer", True),
        ("credit-head", True),
        ("finance-officer", False),
        ("officer", True),
        ("admin", True),
        ("coordinator", False),
    ]:
        listing = await world.get(who, REQUESTS)
        assert listing.status_code == 200, listing.text
        assert (request_id in {entry["request_id"] for entry in listing.json()}) is sees, who
        single = await world.get(who, f"{REQUESTS}/{request_id}")
        assert single.status_code == (200 if sees else 404), who
    assert_problem(await world.get("platform", REQUESTS), 403, "role_forbidden")
    assert [entry["request_id"] for entry in (await world.get("admin", REQUESTS, state="submitted")).json()] == [
        request_id
    ]
    assert (await world.get("admin", REQUESTS, state="granted")).json() == []


async def test_concurrent_decisions_one_wins_and_one_set_of_grants_exists(world: World) -> None:
    import asyncio

    item = await add_item(world, item_body("FGW-XY-0011"))
    request = await filed_and_submitted(world, item["item_id"])
    path = f"{REQUESTS}/{request['request_id']}"
    refuse = {"reasons": ["x"], "condition_not_met": {"condition": "scope", "explanation": "y"}}
    responses = await asyncio.gather(
        world.post("credit-officer", f"{path}/approve", {}),
        world.post("credit-head", f"{path}/approve", {}),
        world.post("credit-head", f"{path}/refuse", refuse),
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 422, 422], [response.text for response in responses]
    assert {response.json()["code"] for response in responses if response.status_code == 422} <= {"already_decided"}
    final = await state_of(world, request["request_id"])
    decided = [event for event in final["history"] if event["action"] in ("approve", "refuse")]
    assert len(decided) == 1
    assert len(final["grants"]) == (1 if final["state"] == "granted" else 0)
    everything = (await world.get("officer", "/v1/grants")).json()
    assert len([grant for grant in everything if grant["sharing_request_id"] == request["request_id"]]) == len(
        final["grants"]
    )
