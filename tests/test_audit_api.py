"""The officer's audit API over real HTTP, on SQLite and on PostgreSQL + Redis: search, paging, payloads, verify."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.audit.keys import open_keyring
from gateway.audit.rows import AUDIT_TABLE
from gateway.storage.db import create_engine
from schemas.times import BEIJING
from security.checkpoints import Checkpoint, TrustedKeys
from security.keys import load_public_key
from simulators.enterprises import DEMO_LISTED_USCC, DEMO_USCC
from tests.helpers.audit import Store, tamper
from tests.helpers.gateways import PURPOSE, RunningGateway

INVOKE = "/v1/services/credit/dishonest-debtor"
REASON = "复核2025年第3批名单中该企业的信用核查依据"
OPENING = {"category": "complaint", "reference": "投诉-2026-0412", "reason": REASON}


async def call_for_purpose(gateway: RunningGateway, uscc: str = DEMO_USCC, purpose: str = PURPOSE) -> httpx.Response:
    async with gateway.client() as client:
        return await client.post(INVOKE, json={"purpose": purpose, "params": {"uscc": uscc}})


async def _officer_get(gateway: RunningGateway, path: str, **params: Any) -> httpx.Response:
    async with gateway.client(gateway.officer) as client:
        return await client.get(path, params=params)


async def _record_by_request(gateway: RunningGateway, request_id: str) -> dict[str, Any]:
    async with gateway.runtime.engine.connect() as connection:
        row = (await connection.execute(select(AUDIT_TABLE).where(AUDIT_TABLE.c.request_id == request_id))).one()
    return dict(row._mapping)


def _store(gateway: RunningGateway) -> Store:
    backend = "sqlite" if gateway.settings.is_sqlite else "postgres"
    return Store(gateway.settings, gateway.runtime.engine, backend)


async def test_officer_searches_by_caller_decision_time_and_subject(gateway: RunningGateway) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    for _ in range(3):
        assert (await call_for_purpose(gateway)).status_code == 200
    listed = await call_for_purpose(gateway, DEMO_LISTED_USCC)
    assert listed.status_code == 200
    assert (await call_for_purpose(gateway, purpose="NOT-GRANTED")).status_code == 403

    allowed = await _officer_get(gateway, "/v1/audit/records", caller="platform", decision="allowed")
    assert allowed.status_code == 200, allowed.text
    records = allowed.json()["records"]
    assert len(records) == 4 and {(r["caller_id"], r["decision"]) for r in records} == {("platform", "allowed")}
    assert records[0]["ts_ms"] >= records[-1]["ts_ms"], "newest first"
    first = records[0]
    assert "request_payload" not in first and first["has_request_payload"] and first["has_response_payload"]
    assert first["roles"] == ["platform"] and set(first["fields"]) == {"uscc", "listed", "cases"}
    assert first["time"].endswith("+00:00") and first["suite"] == "standard" and first["data_key_id"]

    by_subject = (await _officer_get(gateway, "/v1/audit/records", subject=DEMO_LISTED_USCC)).json()["records"]
    assert [r["request_id"] for r in by_subject] == [listed.headers["x-request-id"]]
    assert by_subject[0]["subject_hash"] == gateway.runtime.audit.subject_hash(DEMO_LISTED_USCC)
    assert DEMO_LISTED_USCC not in str(by_subject), "the USCC itself is never shown from the log"

    refused = (await _officer_get(gateway, "/v1/audit/records", decision="refused", caller="platform")).json()
    assert [r["reason_code"] for r in refused["records"]] == ["purpose_not_granted"]

    window = {"from": started.isoformat(), "to": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()}
    in_window = (await _officer_get(gateway, "/v1/audit/records", caller="platform", **window)).json()["records"]
    assert len(in_window) == 5
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await _officer_get(gateway, "/v1/audit/records", **{"from": later})).json()["records"] == []


async def test_bad_search_parameters_name_the_field(gateway: RunningGateway) -> None:
    cases = {
        "query/subject": {"subject": "91350100M000100Y4Z"},
        "query/bogus": {"bogus": "1"},
        "query/from": {"from": "2026-01-01 at noon"},
        "query/to": {"to": "2026-02-30"},
        "query/category": {"category": "curiosity"},
        "query/limit": {"limit": "0"},
        "query/decision": {"decision": "maybe"},
    }
    for field, params in cases.items():
        response = await _officer_get(gateway, "/v1/audit/records", **params)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == field
    garbage = await _officer_get(gateway, "/v1/audit/records", cursor="not-a-cursor")
    assert garbage.status_code == 422 and garbage.json()["code"] == "invalid_cursor"


async def test_cursor_pages_stay_stable_while_records_arrive(gateway: RunningGateway) -> None:
    for _ in range(7):
        assert (await call_for_purpose(gateway)).status_code == 200
    filters = {"caller": "platform", "event": "service.invoke", "limit": "3"}
    first = (await _officer_get(gateway, "/v1/audit/records", **filters)).json()
    assert len(first["records"]) == 3 and first["next_cursor"]
    for _ in range(2):  # newer records arrive between pages
        assert (await call_for_purpose(gateway)).status_code == 200
    second = (await _officer_get(gateway, "/v1/audit/records", **filters, cursor=first["next_cursor"])).json()
    third = (await _officer_get(gateway, "/v1/audit/records", **filters, cursor=second["next_cursor"])).json()
    assert len(second["records"]) == 3 and len(third["records"]) == 1 and third["next_cursor"] is None
    seen = [r["record_id"] for page in (first, second, third) for r in page["records"]]
    assert len(seen) == len(set(seen)) == 7
    stamps = [(r["ts_ms"], r["height"]) for page in (first, second, third) for r in page["records"]]
    assert stamps == sorted(stamps, reverse=True)
    other = await _officer_get(gateway, "/v1/audit/records", caller="admin", limit="3", cursor=first["next_cursor"])
    assert other.status_code == 422 and other.json()["code"] == "cursor_mismatch"


async def test_reading_a_payload_needs_a_reason_and_leaves_its_own_record(gateway: RunningGateway) -> None:
    answer = await call_for_purpose(gateway, DEMO_LISTED_USCC)
    target = await _record_by_request(gateway, answer.headers["x-request-id"])
    record_id = target["record_id"]
    path = f"/v1/audit/records/{record_id}"

    async with gateway.client(gateway.officer) as officer:
        metadata = await officer.get(path)
        short = await officer.post(path + "/payload", json={**OPENING, "reason": "look"})
        read = await officer.post(path + "/payload", json={**OPENING})
        only_response = await officer.post(path + "/payload", json={**OPENING, "parts": ["response"]})
        missing = await officer.post("/v1/audit/records/" + "0" * 32 + "/payload", json={**OPENING})
    assert metadata.status_code == 200 and metadata.json()["record_id"] == record_id
    assert metadata.json()["request_id"] == answer.headers["x-request-id"]

    assert short.status_code == 422 and short.json()["errors"][0]["field"] == "reason"
    refusal = await _record_by_request(gateway, short.headers["x-request-id"])
    assert (refusal["event"], refusal["decision"], refusal["target_id"]) == ("audit.payload.read", "refused", record_id)

    assert read.status_code == 200, read.text
    body = read.json()
    assert body["request"]["params"]["uscc"] == DEMO_LISTED_USCC
    assert body["response"] == answer.json(), "the officer sees exactly what left the gateway"
    reading = await _record_by_request(gateway, read.headers["x-request-id"])
    assert body["audit_request_id"] == read.headers["x-request-id"]
    assert (reading["event"], reading["decision"], reading["caller_id"]) == ("audit.payload.read", "allowed", "officer")
    assert (reading["target_id"], reading["reason"], reading["fields"]) == (record_id, REASON, "request,response")
    assert (reading["reason_category"], reading["reason_ref"]) == ("complaint", "投诉-2026-0412")
    assert reading["response_payload"] is None, "decrypted payloads are not stored a second time"
    assert reading["response_size"] == len(read.content)

    assert only_response.json()["request"] is None and only_response.json()["response"] == answer.json()
    assert missing.status_code == 404 and missing.json()["code"] == "record_not_found"

    readings = (await _officer_get(gateway, "/v1/audit/records", target=record_id)).json()["records"]
    assert {r["request_id"] for r in readings} >= {read.headers["x-request-id"], short.headers["x-request-id"]}
    assert all(r["reason"] in (REASON, None) for r in readings)


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"reason": "          "}, "reason", "reason_too_short"),
        ({"reason": " a b c d e f g h i "}, "reason", "reason_too_short"),
        ({"reason": "aaaaaaaaaa"}, "reason", "reason_repeated"),
        ({"reason": "查 查 查 查 查 查 查 查 查 查 查"}, "reason", "reason_repeated"),
        ({"category": "curiosity"}, "category", "literal_error"),
        ({"category": None}, "category", "missing"),
        ({"reference": "   "}, "reference", "reference_missing"),
        ({"reference": "--"}, "reference", "reference_missing"),
    ],
)
async def test_a_reason_must_be_a_reason(gateway: RunningGateway, change: dict, field: str, code: str) -> None:
    answer = await call_for_purpose(gateway)
    record_id = (await _record_by_request(gateway, answer.headers["x-request-id"]))["record_id"]
    body = {key: value for key, value in {**OPENING, **change}.items() if value is not None}
    async with gateway.client(gateway.officer) as officer:
        read = await officer.post(f"/v1/audit/records/{record_id}/payload", json=body)
    assert read.status_code == 422, read.text
    problem = read.json()
    assert problem["code"] == "validation_failed"
    assert [(error["field"], error["type"]) for error in problem["errors"]] == [(field, code)]
    refusal = await _record_by_request(gateway, read.headers["x-request-id"])
    assert (refusal["decision"], refusal["reason_category"]) == ("refused", None), "a refused reason is not recorded"


async def test_openings_are_searchable_by_category(gateway: RunningGateway) -> None:
    answer = await call_for_purpose(gateway)
    record_id = (await _record_by_request(gateway, answer.headers["x-request-id"]))["record_id"]
    path = f"/v1/audit/records/{record_id}/payload"
    async with gateway.client(gateway.officer) as officer:
        complaint = await officer.post(path, json=OPENING)
        court = await officer.post(
            path, json={**OPENING, "category": "court_order", "reference": "（2026）闽0203执12号"}
        )
    assert complaint.status_code == court.status_code == 200
    found = await _officer_get(gateway, "/v1/audit/records", event="audit.payload.read", category="court_order")
    records = found.json()["records"]
    assert [r["request_id"] for r in records] == [court.headers["x-request-id"]]
    assert (records[0]["reason_category"], records[0]["reason_ref"]) == ("court_order", "（2026）闽0203执12号")
    assert records[0]["reason"] == REASON and records[0]["target_id"] == record_id
    wrong = await _officer_get(gateway, "/v1/audit/records", category="curiosity")
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "query/category"
    async with gateway.client(gateway.officer) as officer:
        verified = await officer.get("/v1/audit/verify")
    assert verified.json()["ok"] is True, "the new columns are in the chain and verify"


async def test_search_takes_dates_and_naive_times_as_beijing_time(gateway: RunningGateway) -> None:
    """`?from=2026-12-05` is 00:00 Beijing time; a time without an offset is Beijing time too."""
    answer = await call_for_purpose(gateway)
    request_id = answer.headers["x-request-id"]
    made = datetime.fromtimestamp((await _record_by_request(gateway, request_id))["ts_ms"] / 1000, BEIJING)
    day = made.date()
    naive = "%Y-%m-%dT%H:%M:%S"
    cases = [
        ({"from": day.isoformat()}, True),
        ({"from": (day + timedelta(days=1)).isoformat()}, False),
        ({"to": day.isoformat()}, False),
        ({"to": (day + timedelta(days=1)).isoformat()}, True),
        ({"from": (made - timedelta(minutes=1)).strftime(naive)}, True),
        ({"from": (made + timedelta(minutes=1)).strftime(naive)}, False),  # read as UTC it would be 8 h later
        ({"from": (made + timedelta(minutes=1)).astimezone(UTC).strftime(naive) + "Z"}, False),
        ({"from": (made - timedelta(minutes=1)).isoformat()}, True),
    ]
    for params, found in cases:
        response = await _officer_get(gateway, "/v1/audit/records", caller="platform", limit="500", **params)
        assert response.status_code == 200, (params, response.text)
        ids = {record["request_id"] for record in response.json()["records"]}
        assert (request_id in ids) is found, params
    wrong = await _officer_get(gateway, "/v1/audit/records", **{"from": "2026-13-05"})
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "query/from"
    assert "Beijing time" in wrong.json()["errors"][0]["message"]


async def test_other_roles_are_refused_and_the_attempt_is_recorded(gateway: RunningGateway) -> None:
    answer = await call_for_purpose(gateway)
    record_id = (await _record_by_request(gateway, answer.headers["x-request-id"]))["record_id"]
    async with gateway.client() as platform:
        search = await platform.get("/v1/audit/records")
    async with gateway.client(gateway.admin) as admin:
        read = await admin.post(f"/v1/audit/records/{record_id}/payload", json={**OPENING})
        verify = await admin.get("/v1/audit/verify")
    for response in (search, read, verify):
        assert response.status_code == 403 and response.json()["code"] == "role_forbidden"
    attempt = await _record_by_request(gateway, read.headers["x-request-id"])
    assert (attempt["caller_id"], attempt["decision"], attempt["reason_code"]) == ("admin", "refused", "role_forbidden")
    assert attempt["path"] == f"/v1/audit/records/{record_id}/payload"
    assert attempt["request_payload"] is not None, "even the refused request is kept, sealed"


async def test_verify_reports_intact_then_names_the_changed_record(gateway: RunningGateway) -> None:
    for _ in range(4):
        assert (await call_for_purpose(gateway)).status_code == 200
    assert await gateway.runtime.audit.checkpoint() is not None
    ok = await _officer_get(gateway, "/v1/audit/verify")
    assert ok.status_code == 200, ok.text
    status = ok.json()
    assert status["ok"] is True and status["trusted_keys"]
    chain = status["chains"][0]
    assert chain["chain_id"] == gateway.settings.node_id and chain["signatures_checked"]
    assert chain["sealed_height"] >= 4 and chain["fault"] is None

    await tamper(_store(gateway), ("UPDATE audit_records SET caller_id = 'nobody' WHERE height = 2", {}))
    bad = (await _officer_get(gateway, "/v1/audit/verify")).json()
    assert bad["ok"] is False
    assert bad["chains"][0]["fault"]["height"] == 2 and bad["chains"][0]["fault"]["kind"] == "changed"


async def test_checkpoints_are_listed_with_the_key_that_signs_them(gateway: RunningGateway) -> None:
    assert (await call_for_purpose(gateway)).status_code == 200
    signed = await gateway.runtime.audit.checkpoint()
    assert signed is not None
    listing = (await _officer_get(gateway, "/v1/audit/checkpoints")).json()
    found = [cp for cp in listing["checkpoints"] if cp["height"] == signed.height]
    assert found and found[0]["head_hash"] == signed.head_hash and found[0]["time"].endswith("+00:00")
    signer = next(s for s in listing["signers"] if s["key_id"] == signed.key_id)
    trusted = TrustedKeys([load_public_key(signer["public_key"])])
    assert trusted.check(Checkpoint.from_dict(found[0])) is None
    base64.b64decode(found[0]["signature"], validate=True)
    bad = await _officer_get(gateway, "/v1/audit/checkpoints", limit="5000")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query/limit"


async def _wait_for_key(gateway: RunningGateway, key_id: str, seconds: float = 60.0) -> None:
    # A bound on hanging on a loaded host, not a speed claim: the node polls the ring about once a second.
    deadline = time.monotonic() + seconds
    while gateway.runtime.keyring.current().key_id != key_id:
        assert time.monotonic() < deadline, f"the node did not pick up {key_id}"
        await asyncio.sleep(0.05)


async def test_rotation_during_load_reaches_the_node_and_old_payloads_stay_readable(gateway: RunningGateway) -> None:
    other_node = create_engine(gateway.settings)  # the operator's `keys rotate`, from another process or node
    try:
        ring = await open_keyring(gateway.settings, other_node)
        before = gateway.runtime.keyring.current().key_id

        async def load(count: int) -> list[httpx.Response]:
            async with gateway.client() as client:
                return await asyncio.gather(
                    *[
                        client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}})
                        for _ in range(count)
                    ]
                )

        # One record surely sealed with the old key: on a loaded host the first batch may not start before the
        # rotation reaches the node.
        assert [r.status_code for r in await load(1)] == [200]
        first = asyncio.create_task(load(30))
        rotated = (await ring.rotate())[0]
        await _wait_for_key(gateway, rotated.key_id)  # reached while the load runs; how fast is the bench's business
        responses = await first + await load(30)
        assert [r.status_code for r in responses] == [200] * 60
    finally:
        await other_node.dispose()
    async with gateway.runtime.engine.connect() as connection:
        rows = [dict(r._mapping) for r in await connection.execute(select(AUDIT_TABLE).order_by(AUDIT_TABLE.c.height))]
    used = [row["data_key_id"] for row in rows]
    assert {before, rotated.key_id} <= set(used)
    switched = used.index(rotated.key_id)
    assert set(used[switched:]) == {rotated.key_id}, "once switched, the node never seals with the old key again"
    from gateway.audit.search import open_payload

    for row in rows:
        if row["request_payload"] is not None:
            assert await open_payload(gateway.runtime.keyring, row, "request") is not None
    status = (await _officer_get(gateway, "/v1/audit/verify")).json()
    assert status["ok"], status


async def test_a_shredded_payload_is_gone_but_the_chain_verifies(gateway: RunningGateway) -> None:
    old = await call_for_purpose(gateway, DEMO_LISTED_USCC)
    old_record = await _record_by_request(gateway, old.headers["x-request-id"])
    other_node = create_engine(gateway.settings)
    try:
        ring = await open_keyring(gateway.settings, other_node)
        rotated = (await ring.rotate())[0]
        await _wait_for_key(gateway, rotated.key_id)
        new = await call_for_purpose(gateway)
        destroyed = await ring.destroy_before(int(time.time() * 1000))
    finally:
        await other_node.dispose()
    assert old_record["data_key_id"] in {row.key_id for row in destroyed}
    async with gateway.client(gateway.officer) as officer:
        gone = await officer.post(f"/v1/audit/records/{old_record['record_id']}/payload", json={**OPENING})
        new_record = await _record_by_request(gateway, new.headers["x-request-id"])
        kept = await officer.post(f"/v1/audit/records/{new_record['record_id']}/payload", json={**OPENING})
        status = (await officer.get("/v1/audit/verify")).json()
    assert gone.status_code == 410 and gone.json()["code"] == "payload_shredded"
    assert kept.status_code == 200 and kept.json()["response"] == new.json()
    assert status["ok"], status


async def test_openapi_documents_the_audit_routes(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        spec = (await client.get("/openapi.json")).json()
    search = spec["paths"]["/v1/audit/records"]["get"]
    assert {p["name"] for p in search["parameters"]} >= {"from", "to", "caller", "subject", "decision", "cursor"}
    assert set(search["responses"]) >= {"200", "401", "403", "422"}
    payload = spec["paths"]["/v1/audit/records/{record_id}/payload"]["post"]
    body_schema = payload["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["properties"]["reason"]["minLength"] == 10
    assert set(body_schema["required"]) == {"category", "reference", "reason"}
    assert body_schema["properties"]["category"]["enum"] == [
        "complaint",
        "inspection",
        "incident",
        "court_order",
        "other",
    ]
    assert "category" in {p["name"] for p in search["parameters"]}
    assert set(payload["responses"]) >= {"200", "403", "404", "410", "422"}
    for path in ("/v1/audit/records/{record_id}", "/v1/audit/verify", "/v1/audit/checkpoints"):
        assert "get" in spec["paths"][path]
    assert "AuditRecordOut" in spec["components"]["schemas"]


async def test_switching_to_the_sm_suite_keeps_one_chain_that_verifies(gateway: RunningGateway) -> None:
    from gateway.audit.signer import load_signer
    from gateway.audit.witness import witness_path
    from gateway.audit.writer import AuditWriter

    runtime, settings = gateway.runtime, gateway.settings
    answers = []
    for suite in ("standard", "sm"):
        if suite == "sm":  # what a restart with MSJX_CRYPTO_SUITE=sm does to the audit writer
            await runtime.audit.close()
            runtime.audit = AuditWriter(
                runtime.engine,
                chain_id=settings.node_id,
                keyring=runtime.keyring,
                suite="sm",
                signer=load_signer(settings, "sm"),
                witness_path=witness_path(settings, settings.node_id),
            )
            await runtime.audit.start()
            runtime.exchanges.audit = runtime.audit  # the pipeline every exchange goes through writes with it
        answer = await call_for_purpose(gateway, DEMO_LISTED_USCC)
        assert answer.status_code == 200, answer.text
        answers.append((suite, answer))
    records = [await _record_by_request(gateway, answer.headers["x-request-id"]) for _, answer in answers]
    assert [record["suite"] for record in records] == ["standard", "sm"]
    assert records[1]["data_key_id"].startswith("dk-sm-") and records[1]["height"] > records[0]["height"]
    found = (await _officer_get(gateway, "/v1/audit/records", subject=DEMO_LISTED_USCC)).json()["records"]
    assert {r["suite"] for r in found} == {"standard", "sm"}, "one search finds the subject under both suites"
    async with gateway.client(gateway.officer) as officer:
        for record, (_, answer) in zip(records, answers, strict=True):
            read = await officer.post(f"/v1/audit/records/{record['record_id']}/payload", json={**OPENING})
            assert read.status_code == 200 and read.json()["response"] == answer.json()
    sealed = await runtime.audit.checkpoint()
    assert sealed is not None and sealed.key_id.startswith("sm2:"), "the sm suite signs its checkpoints with SM2"
    listing = (await _officer_get(gateway, "/v1/audit/checkpoints")).json()
    assert {cp["key_id"].split(":")[0] for cp in listing["checkpoints"]} == {"ed25519", "sm2"}
    signer = next(s for s in listing["signers"] if s["key_id"] == sealed.key_id)
    assert TrustedKeys([load_public_key(signer["public_key"])]).check(sealed) is None
    status = (await _officer_get(gateway, "/v1/audit/verify")).json()
    assert status["ok"], status
