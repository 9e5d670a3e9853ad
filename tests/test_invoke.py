"""The invoke path end to end over real HTTP, on SQLite and on PostgreSQL + Redis: success, every refusal, audit."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from gateway.access.nonces import MemoryNonceStore
from gateway.audit.verify import verify_all
from simulators.enterprises import DEMO_LISTED_USCC, DEMO_USCC
from tests.helpers.calls import INVOKE, assert_problem, body_for, last_record, send, signed
from tests.helpers.gateways import PURPOSE, RunningGateway


async def test_allowed_call_returns_data_and_is_audited(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        response = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_LISTED_USCC}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["data"]["uscc"] == DEMO_LISTED_USCC
    assert answer["data"]["listed"] is True
    assert answer["data"]["cases"], "a listed enterprise has cases"
    assert isinstance(answer["data"]["cases"][0]["amount"], str), "money stays a decimal string"
    meta = answer["meta"]
    assert meta["service"] == "credit" and meta["operation"] == "dishonest-debtor"
    assert meta["grant_id"] == gateway.grant_id
    assert meta["request_id"] == response.headers["x-request-id"]

    record = await last_record(gateway)
    assert record["request_id"] == meta["request_id"]
    assert record["decision"] == "allowed"
    assert record["caller_id"] == "platform"
    assert record["purpose"] == PURPOSE
    assert record["grant_id"] == gateway.grant_id
    assert record["subject_hash"] == gateway.runtime.audit.subject_hash(DEMO_LISTED_USCC)
    assert record["subject_hash"] != DEMO_LISTED_USCC
    assert set(record["fields"].split(",")) == {"uscc", "listed", "cases"}
    # Payloads are sealed: neither the USCC nor the answer appear in clear.
    assert DEMO_LISTED_USCC.encode() not in record["request_payload"]
    assert DEMO_LISTED_USCC.encode() not in record["response_payload"]
    assert record["response_size"] == len(response.content)


async def test_narrow_grant_returns_only_granted_fields(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        response = await client.post(INVOKE, json={"purpose": "QZ-2025-007", "params": {"uscc": DEMO_LISTED_USCC}})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"listed": True}
    assert response.json()["meta"]["grant_id"] == gateway.narrow_grant_id
    assert (await last_record(gateway))["fields"] == "listed"


async def _assert_refused_401(gw: RunningGateway, request: httpx.Request, code: str) -> None:
    response = await send(request)
    assert_problem(response, 401, code)
    assert response.headers["www-authenticate"].startswith("Signature")
    record = await last_record(gw)
    assert record["decision"] == "refused"
    assert record["reason_code"] == code
    assert record["status_code"] == 401
    assert record["request_id"] == response.headers["x-request-id"]


async def test_unsigned_request_is_refused(gateway: RunningGateway) -> None:
    request = httpx.Request("POST", gateway.url + INVOKE, content=body_for(DEMO_USCC))
    await _assert_refused_401(gateway, request, "signature_missing")


async def test_malformed_signature_input_is_refused(gateway: RunningGateway) -> None:
    request = signed(gateway, gateway.platform)
    request.headers["signature-input"] = "msjx=(not a list"
    await _assert_refused_401(gateway, request, "signature_malformed")


@pytest.mark.parametrize("offset", [-400, 400])
async def test_signature_outside_window_is_refused(gateway: RunningGateway, offset: int) -> None:
    created = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    await _assert_refused_401(gateway, signed(gateway, gateway.platform, created=created), "signature_expired")


def nonce_memory_since(gateway: RunningGateway, seconds_ago: float) -> None:
    """Pretend the gateway's nonce store (this process, or the Redis server) started `seconds_ago`."""
    nonces = gateway.runtime.nonces
    if isinstance(nonces, MemoryNonceStore):
        nonces.started = time.time() - seconds_ago
        return
    nonces.epoch.started = time.time() - seconds_ago
    nonces.epoch.forgotten = 0.0  # nothing dropped since (the node's first look forgets up to the node's start)


@pytest.mark.parametrize("offset", [-200, 200])
async def test_signature_inside_window_is_accepted(gateway: RunningGateway, offset: int) -> None:
    # ±300 s is the gateway's window both ways: a client clock 200 s ahead is still in it, and one 200 s behind
    # once the nonce store has been up longer than that (before, see test_signature_before_the_store_started).
    nonce_memory_since(gateway, 1000)
    created = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    response = await send(signed(gateway, gateway.platform, created=created))
    assert response.status_code == 200, response.text


async def test_signature_before_the_store_started_is_refused(gateway: RunningGateway) -> None:
    # Signed 100 s ago, inside the ±300 s window, but before the nonce store started: it may have been used.
    nonce_memory_since(gateway, 50)
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=100)
    await _assert_refused_401(gateway, signed(gateway, gateway.platform, created=created), "signature_before_restart")
    nonce_memory_since(gateway, 150)
    response = await send(signed(gateway, gateway.platform, created=created))
    assert response.status_code == 200, response.text


async def test_signature_by_another_key_is_refused(gateway: RunningGateway) -> None:
    request = signed(gateway, gateway.platform, private_key=Ed25519PrivateKey.generate())
    await _assert_refused_401(gateway, request, "signature_invalid")
    assert (await last_record(gateway))["caller_id"] == "platform", "the claimed caller is recorded"


async def test_unknown_key_is_refused(gateway: RunningGateway) -> None:
    await _assert_refused_401(gateway, signed(gateway, gateway.platform, key_id="nobody.123"), "key_unknown")


async def test_revoked_key_is_refused(gateway: RunningGateway) -> None:
    path = f"/v1/callers/platform/keys/{gateway.platform.key_id}/revoke"
    async with gateway.client(gateway.admin) as admin:
        revoked = await admin.post(path)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    await _assert_refused_401(gateway, signed(gateway, gateway.platform), "key_revoked")


async def test_replayed_nonce_is_refused(gateway: RunningGateway) -> None:
    request = signed(gateway, gateway.platform, nonce="replay-nonce-0001")
    first = await send(request)
    assert first.status_code == 200, first.text
    await _assert_refused_401(gateway, request, "nonce_replayed")


async def test_body_changed_after_signing_is_refused(gateway: RunningGateway) -> None:
    request = signed(gateway, gateway.platform)
    tampered = httpx.Request("POST", request.url, content=body_for(DEMO_LISTED_USCC), headers=request.headers)
    await _assert_refused_401(gateway, tampered, "digest_mismatch")


async def test_body_without_digest_is_refused(gateway: RunningGateway) -> None:
    request = signed(gateway, gateway.platform)
    del request.headers["content-digest"]
    await _assert_refused_401(gateway, request, "digest_missing")


async def test_wrong_purpose_and_missing_grant_are_forbidden(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        wrong_purpose = await client.post(INVOKE, json={"purpose": "SH-9999", "params": {"uscc": DEMO_USCC}})
        no_grant = await client.post(
            "/v1/services/credit/abnormal-operation", json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}}
        )
    assert_problem(wrong_purpose, 403, "purpose_not_granted")
    assert_problem(no_grant, 403, "no_grant")
    record = await last_record(gateway)
    assert (record["decision"], record["reason_code"], record["operation"]) == (
        "refused",
        "no_grant",
        "abnormal-operation",
    )


async def test_revoked_grant_is_refused_on_next_call(gateway: RunningGateway) -> None:
    async with gateway.client(gateway.admin) as admin:
        assert (await admin.post(f"/v1/grants/{gateway.grant_id}/revoke")).status_code == 200
    async with gateway.client() as client:
        response = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}})
    problem = assert_problem(response, 403, "grant_revoked")
    assert gateway.grant_id in problem["detail"]
    record = await last_record(gateway)
    assert (record["reason_code"], record["grant_id"]) == ("grant_revoked", gateway.grant_id)


async def test_unknown_service_and_operation_are_404(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        service = await client.post("/v1/services/nope/x", json={"purpose": PURPOSE, "params": {}})
        operation = await client.post("/v1/services/credit/nope", json={"purpose": PURPOSE, "params": {}})
    assert_problem(service, 404, "unknown_service")
    assert_problem(operation, 404, "unknown_operation")


async def test_bad_input_is_422_naming_the_field(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        bad_check = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": "91350100M000100Y4Z"}})
        no_purpose = await client.post(INVOKE, json={"params": {"uscc": DEMO_USCC}})
        extra = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC, "x": 1}})
        not_json = await client.post(INVOKE, content=b"{nope", headers={"content-type": "application/json"})
    problem = assert_problem(bad_check, 422, "validation_failed")
    assert problem["errors"][0]["field"] == "params/uscc"
    assert "'3'" in problem["errors"][0]["message"], "the message says what the check character should be"
    assert assert_problem(no_purpose, 422, "validation_failed")["errors"][0]["field"] == "purpose"
    assert assert_problem(extra, 422, "validation_failed")["errors"][0]["field"] == "params/x"
    assert_problem(not_json, 422, "invalid_json")


@pytest.mark.parametrize(
    ("fault", "status", "code", "attempts"),
    [
        ({"mode": "status", "status": 500}, 502, "upstream_error", 3),
        ({"mode": "malformed"}, 502, "upstream_malformed", 1),
        ({"mode": "latency", "latency_ms": 1500}, 504, "upstream_timeout", 3),
        ({"mode": "drop"}, 502, "upstream_unavailable", 3),
    ],
)
async def test_upstream_failures_map_to_problems(
    gateway: RunningGateway, clear_faults: None, fault: dict[str, Any], status: int, code: str, attempts: int
) -> None:
    # The fault lasts: a safe operation is retried (3 attempts by default) on transient failures, then mapped.
    credit_url = gateway.settings.upstream_urls["credit"]
    async with httpx.AsyncClient() as control:
        assert (await control.post(f"{credit_url}/_sim/faults", json=fault)).status_code == 200
        served = int((await control.get(f"{credit_url}/_sim/stats")).json()["requests"])
        async with gateway.client() as client:
            response = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}})
        assert int((await control.get(f"{credit_url}/_sim/stats")).json()["requests"]) - served == attempts
    assert_problem(response, status, code)
    record = await last_record(gateway)
    assert (record["decision"], record["reason_code"], record["status_code"]) == ("failed", code, status)
    assert record["upstream_us"] is not None
    assert (record["upstream_status"] or "").endswith(f";attempts={attempts}") is (attempts > 1)


async def test_audit_store_down_fails_closed(gateway: RunningGateway) -> None:
    engine = gateway.runtime.engine
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE audit_records RENAME TO audit_records_away"))
    try:
        async with gateway.client() as client:
            response = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_LISTED_USCC}})
        assert_problem(response, 503, "audit_unavailable")
        assert DEMO_LISTED_USCC not in response.text, "no data leaves unlogged"
        async with httpx.AsyncClient() as plain:
            ready = await plain.get(gateway.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["audit"].startswith("last commit failed")
    finally:
        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE audit_records_away RENAME TO audit_records"))
    async with gateway.client() as client:
        again = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}})
    assert again.status_code == 200, "the gateway recovers once the store is back"
    reports = await verify_all(engine)
    assert all(report.ok for report in reports), [str(r.fault) for r in reports]


async def test_chain_verifies_and_a_changed_row_is_named(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        for _ in range(5):
            response = await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}})
            assert response.status_code == 200
    engine = gateway.runtime.engine
    reports = await verify_all(engine)
    assert [report.ok for report in reports] == [True]
    assert reports[0].records >= 5
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # The append-only trigger refuses UPDATE; an attacker with the table owner's rights disables it first.
            await connection.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
        await connection.execute(
            text("UPDATE audit_records SET purpose = 'SOMETHING-ELSE' WHERE chain_id = :chain AND height = 3"),
            {"chain": gateway.settings.node_id},
        )
    fault = (await verify_all(engine))[0].fault
    assert fault is not None
    assert (fault.height, fault.kind) == (3, "changed")


async def test_concurrent_calls_share_commits_and_chain_stays_linear(gateway: RunningGateway) -> None:
    import asyncio

    async with gateway.client() as client:
        responses = await asyncio.gather(
            *[client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}}) for _ in range(40)]
        )
    assert [r.status_code for r in responses] == [200] * 40
    reports = await verify_all(gateway.runtime.engine)
    assert reports[0].ok and reports[0].records == 40


async def test_ops_endpoints(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        spec = (await client.get("/openapi.json")).json()
        missing = await client.get("/v1/nowhere")
    assert ready.status_code == 200, ready.text
    expected = {"database", "audit", "calendar"} | ({"redis"} if gateway.settings.redis_url else set())
    assert set(ready.json()["checks"]) == expected
    assert "/v1/services/{service}/{operation}" in spec["paths"]
    invoke = spec["paths"]["/v1/services/{service}/{operation}"]["post"]
    assert invoke["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/InvokeRequest")
    assert "InvokeRequest" in spec["components"]["schemas"]
    assert set(invoke["responses"]) >= {"200", "401", "403", "404", "422", "502", "503", "504"}
    assert_problem_like = missing.json()
    assert missing.status_code == 404 and assert_problem_like["code"] == "not_found"


async def test_platform_cannot_use_admin_api(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/callers")
    assert_problem(response, 403, "role_forbidden")


async def test_services_listing_shows_schemas_and_grants(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/services")
    assert response.status_code == 200, response.text
    credit = next(s for s in response.json()["services"] if s["service"] == "credit")
    dishonest = next(o for o in credit["operations"] if o["operation"] == "dishonest-debtor")
    assert "uscc" in dishonest["input_schema"]["properties"]
    assert {g["purpose"] for g in dishonest["grants"]} == {PURPOSE, "QZ-2025-007"}
