"""Exactly-once payments through the gateway over real HTTP, on SQLite and on PostgreSQL + Redis: idempotency keys,
concurrent duplicates, exact money, and answers lost on the way back reconciled with voucher-status."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, text

from gateway.storage.models import AuditRecord, IdempotencyKey, PaymentIntent
from security.signatures import sign_request
from tests.helpers.deployment import SUBMIT
from tests.helpers.gateways import PURPOSE
from tests.helpers.payments import PayGateway
from tests.helpers.treasury import hold_answers, treasury_listing, voucher


def key() -> str:
    return f"k-{secrets.token_hex(8)}"


async def test_pays_once_and_replays_the_stored_answer(pay: PayGateway) -> None:
    body, idem = voucher(), key()
    first = await pay.pay(body, idem)
    assert first.status_code == 200, first.text
    data = first.json()["data"]
    assert data["voucher_no"] == body["voucher_no"] and data["status"] == "accepted"
    assert data["pay_amt"] == "50000.00"
    assert "idempotent-replayed" not in first.headers

    again = await pay.pay(body, idem)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content, "the stored answer, byte for byte"
    assert again.headers["x-request-id"] != first.headers["x-request-id"], "the repeat is its own audited exchange"

    listing = await treasury_listing(pay.treasury_url)
    assert listing["accepted"] == 1 and listing["submissions"] == 1
    outcome = await pay.outcome(body["voucher_no"])
    assert outcome is not None and outcome.outcome == "accepted" and outcome.resolved_by == "request"
    assert outcome.pay_amt == "50000.00"
    async with pay.gw.runtime.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(AuditRecord.reason_code, AuditRecord.subject_hash, AuditRecord.status_code)
                .where(AuditRecord.operation == "submit-voucher")
                .order_by(AuditRecord.ts_ms, AuditRecord.height)
            )
        ).all()
    assert [row[0] for row in rows] == [None, "idempotent_replay"]
    assert rows[0][1] == pay.gw.runtime.audit.subject_hash(body["uscc"])


async def test_key_is_required_well_formed_and_signed(pay: PayGateway) -> None:
    missing = await pay.pay(voucher(), None)
    assert missing.status_code == 400 and missing.json()["code"] == "idempotency_key_missing"
    async with pay.gw.client() as client:
        malformed = await client.post(
            SUBMIT, json={"purpose": PURPOSE, "params": voucher()}, headers={"Idempotency-Key": '"a" ;x'}
        )
    assert malformed.status_code == 400 and malformed.json()["code"] == "idempotency_key_invalid"

    # Signed without the key, then the key added: the signature does not cover it, so the request is refused.
    content = orjson.dumps({"purpose": PURPOSE, "params": voucher()})
    request = httpx.Request("POST", pay.gw.url + SUBMIT, content=content, headers={"content-type": "application/json"})
    platform = pay.gw.platform
    sign_request(
        "POST", str(request.url), request.headers, content, key_id=platform.key_id, private_key=platform.private_key
    )
    request.headers["Idempotency-Key"] = '"unsigned-key"'
    async with httpx.AsyncClient() as client:
        unsigned = await client.send(request)
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "signature_invalid"
    assert "Idempotency-Key" in unsigned.json()["detail"]
    assert (await treasury_listing(pay.treasury_url))["submissions"] == 0


async def test_same_key_with_another_body_is_refused(pay: PayGateway) -> None:
    idem = key()
    assert (await pay.pay(voucher(), idem)).status_code == 200
    other = await pay.pay(voucher(), idem)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert (await treasury_listing(pay.treasury_url))["accepted"] == 1


async def test_a_suspended_or_revoked_grant_pays_nothing_and_says_why(pay: PayGateway) -> None:
    paid_body, paid_key = voucher(), key()
    assert (await pay.pay(paid_body, paid_key)).status_code == 200
    async with pay.gw.client() as client:
        services = (await client.get("/v1/services")).json()["services"]
    treasury = next(service for service in services if service["service"] == "treasury")
    [submit] = [operation for operation in treasury["operations"] if operation["operation"] == "submit-voucher"]
    grant_id = submit["grants"][0]["grant_id"]

    async with pay.gw.client(pay.gw.admin) as admin:
        suspended = await admin.post(f"/v1/grants/{grant_id}/suspend", json={"reason": "疑似重复兑付，暂停核查"})
    assert suspended.status_code == 200, suspended.text
    body = voucher()
    refused = await pay.pay(body, key())
    assert refused.status_code == 403 and refused.json()["code"] == "grant_suspended", refused.text
    assert "疑似重复兑付" in refused.json()["detail"]
    replay = await pay.pay(paid_body, paid_key)
    assert replay.status_code == 403 and replay.json()["code"] == "grant_suspended", "no answer while suspended"
    assert await pay.intent(body["voucher_no"]) is None, "nothing was written to be paid"
    assert (await treasury_listing(pay.treasury_url))["submissions"] == 1

    async with pay.gw.client(pay.gw.admin) as admin:
        assert (await admin.post(f"/v1/grants/{grant_id}/resume")).status_code == 200
        assert (await pay.pay(body, key())).status_code == 200, "resumed: paid"
        assert (await admin.post(f"/v1/grants/{grant_id}/revoke")).status_code == 200
    revoked = await pay.pay(voucher(), key())
    assert revoked.status_code == 403 and revoked.json()["code"] == "grant_revoked", revoked.text
    assert (await treasury_listing(pay.treasury_url))["accepted"] == 2


async def test_fifty_concurrent_duplicates_make_one_payment(pay: PayGateway) -> None:
    body, idem = voucher(), key()
    limits = httpx.Limits(max_connections=50)
    async with pay.gw.client(limits=limits) as client:
        responses = await asyncio.gather(*(pay.pay(body, idem, client) for _ in range(50)))
        statuses = sorted(response.status_code for response in responses)
        assert set(statuses) <= {200, 409}, statuses
        assert statuses.count(200) >= 1
        for response in responses:
            if response.status_code == 409:
                assert response.json()["code"] == "idempotency_in_flight"
                assert response.headers["retry-after"] == "1"
        paid = {response.json()["data"]["treasury_serial"] for response in responses if response.status_code == 200}
        assert len(paid) == 1
        # Once settled, every repeat gets the stored answer.
        after = await asyncio.gather(*(pay.pay(body, idem, client) for _ in range(10)))
    assert {response.status_code for response in after} == {200}
    listing = await treasury_listing(pay.treasury_url)
    assert listing["accepted"] == 1 and listing["submissions"] == 1


async def test_one_voucher_under_many_keys_is_paid_once(pay: PayGateway) -> None:
    body = voucher()
    async with pay.gw.client(limits=httpx.Limits(max_connections=20)) as client:
        responses = await asyncio.gather(*(pay.pay(body, key(), client) for _ in range(20)))
    codes = sorted(response.json().get("code", "ok") if response.status_code != 200 else "ok" for response in responses)
    assert codes.count("ok") == 1, codes
    assert set(codes) == {"ok", "voucher_exists"}
    assert (await treasury_listing(pay.treasury_url))["submissions"] == 1


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"pay_amt": "0.00", "amounts": ("0.00",)}, "params/lines/0/pay_amt", "greater than 0"),
        ({"pay_amt": "-50000.00"}, "params/pay_amt", "greater than 0"),
        ({"pay_amt": "50000.001"}, "params/pay_amt", "2 decimal places"),
        ({"pay_amt": "49999.99"}, "params/pay_amt", "sum of the lines"),
        ({"amounts": ("30000.005", "20000.00")}, "params/lines/0/pay_amt", "2 decimal places"),
    ],
)
async def test_bad_amounts_are_refused_naming_the_field_and_nothing_is_paid(
    pay: PayGateway, change: dict[str, Any], field: str, message: str
) -> None:
    change = dict(change)  # parametrize shares the dict between backends: never mutate it
    amounts = change.pop("amounts", ("30000.00", "20000.00"))
    body = voucher(amounts=amounts, **change)
    response = await pay.pay(body, key())
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_failed"
    errors = {error["field"]: error["message"] for error in problem["errors"]}
    assert field in errors and message in errors[field], errors
    assert (await treasury_listing(pay.treasury_url))["submissions"] == 0
    assert await pay.count(PaymentIntent) == 0 and await pay.count(IdempotencyKey) == 0


async def test_exact_json_numbers_are_decimals_end_to_end(pay: PayGateway) -> None:
    """Numbers, not strings, in the JSON body: 0.1 + 0.2 is 0.3 here, and a 16-digit amount keeps its cents."""
    small = voucher(amounts=("X1", "X2"), pay_amt="X3")
    raw = orjson.dumps({"purpose": PURPOSE, "params": small})
    raw = raw.replace(b'"X1"', b"0.1").replace(b'"X2"', b"0.2").replace(b'"X3"', b"0.3")
    response = await pay.pay(raw, key())
    assert response.status_code == 200, response.text
    assert response.json()["data"]["pay_amt"] == "0.30"

    big = voucher(amounts=("X1",), pay_amt="X1")
    raw = orjson.dumps({"purpose": PURPOSE, "params": big}).replace(b'"X1"', b"1234567890123456.78")
    response = await pay.pay(raw, key())
    assert response.status_code == 200, response.text
    assert response.json()["data"]["pay_amt"] == "1234567890123456.78"
    amounts = {item["voucher_no"]: item["pay_amt"] for item in (await treasury_listing(pay.treasury_url))["vouchers"]}
    assert amounts == {small["voucher_no"]: "0.30", big["voucher_no"]: "1234567890123456.78"}
    intent = await pay.intent(big["voucher_no"])
    assert intent is not None and intent.pay_amt == "1234567890123456.78"


async def test_answer_lost_after_acceptance_is_looked_up_not_resent(pay: PayGateway) -> None:
    """The treasury commits the voucher, then its answer is held past the gateway's timeout."""
    await hold_answers(pay.treasury_url, "hold", seconds=2.5)
    body, idem = voucher(), key()
    response = await pay.pay(body, idem)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["voucher_no"] == body["voucher_no"]
    listing = await treasury_listing(pay.treasury_url)
    assert listing["submissions"] == 1, "voucher-status answered; nothing was sent again"
    intent = await pay.intent(body["voucher_no"])
    outcome = await pay.outcome(body["voucher_no"])
    assert intent is not None and intent.attempts == 1
    assert outcome is not None and outcome.outcome == "paid", "what voucher-status said"


async def test_request_lost_on_the_way_in_is_sent_again_only_after_the_grace_period(pay: PayGateway) -> None:
    """The treasury stalls before reading the voucher; the gateway gives up, so the voucher never arrives."""
    async with httpx.AsyncClient() as client:
        await client.post(f"{pay.treasury_url}/_sim/faults", json={"mode": "latency", "latency_ms": 1500, "count": 1})
    body, idem = voucher(), key()
    first = await pay.pay(body, idem)
    assert first.status_code == 504, first.text
    problem = first.json()
    assert problem["code"] == "payment_pending" and "Retry-After" in first.headers
    assert body["voucher_no"] in problem["detail"]
    assert await pay.outcome(body["voucher_no"]) is None

    soon = await pay.pay(body, idem)  # voucher-status says "not there", but it may still be on its way: wait
    assert soon.status_code == 503 and soon.json()["code"] == "payment_pending", soon.text
    assert "holds no voucher" in soon.json()["detail"]
    assert (await treasury_listing(pay.treasury_url))["submissions"] == 0

    await asyncio.sleep(2.1)  # grace: twice the upstream timeout since the last send
    late = await pay.pay(body, idem)
    assert late.status_code == 200, late.text
    assert "idempotent-replayed" not in late.headers, "settled by this request"
    listing = await treasury_listing(pay.treasury_url)
    assert listing["accepted"] == 1 and listing["submissions"] == 1
    intent = await pay.intent(body["voucher_no"])
    outcome = await pay.outcome(body["voucher_no"])
    assert intent is not None and intent.attempts == 2
    assert outcome is not None and outcome.outcome == "accepted" and outcome.resolved_by == "request"


async def test_voucher_the_treasury_never_got_is_sent_again_once_by_the_reconciler(pay: PayGateway) -> None:
    async with httpx.AsyncClient() as client:
        await client.post(f"{pay.treasury_url}/_sim/faults", json={"mode": "drop", "count": 1})
    body, idem = voucher(), key()
    first = await pay.pay(body, idem)
    assert first.status_code == 502 and first.json()["code"] == "payment_pending", first.text

    early = await pay.payments.reconcile()
    assert early["pending"] == 1, "within the grace period nothing is sent again"
    assert (await treasury_listing(pay.treasury_url))["submissions"] == 0

    await asyncio.sleep(2.1)  # grace: twice the upstream timeout
    late = await pay.payments.reconcile()
    assert late == {"resolved": 1, "pending": 0, "busy": 0}
    listing = await treasury_listing(pay.treasury_url)
    assert listing["accepted"] == 1 and listing["submissions"] == 1
    intent = await pay.intent(body["voucher_no"])
    outcome = await pay.outcome(body["voucher_no"])
    assert intent is not None and intent.attempts == 2
    assert outcome is not None and outcome.resolved_by == "reconciler"

    replay = await pay.pay(body, idem)
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["data"]["treasury_serial"] == outcome.treasury_serial
    assert (await pay.payments.reconcile())["resolved"] == 0, "nothing left open"

    async with pay.gw.runtime.engine.connect() as connection:
        events = (
            await connection.execute(
                select(AuditRecord.decision, AuditRecord.operation)
                .where(AuditRecord.event == "payment.reconcile")
                .order_by(AuditRecord.ts_ms, AuditRecord.height)
            )
        ).all()
    assert [tuple(row) for row in events] == [("failed", "voucher-status"), ("allowed", "submit-voucher")]


async def test_a_treasury_refusal_is_final_and_replayed_as_the_same_problem(pay: PayGateway) -> None:
    await hold_answers(pay.treasury_url, "refuse")
    body, idem = voucher(), key()
    first = await pay.pay(body, idem)
    assert first.status_code == 502, first.text
    assert first.headers["content-type"].startswith("application/problem+json")
    problem = first.json()
    assert problem["code"] == "voucher_refused" and "2003" in problem["detail"]
    outcome = await pay.outcome(body["voucher_no"])
    assert outcome is not None and outcome.outcome == "refused" and outcome.treasury_code == "2003"

    again = await pay.pay(body, idem)
    assert again.status_code == 502 and again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.content == first.content
    assert (await pay.payments.reconcile())["resolved"] == 0, "a refusal is an outcome: nothing is left to settle"
    listing = await treasury_listing(pay.treasury_url)
    assert listing["accepted"] == 0 and listing["by_code"] == {"2003": 1}


async def test_a_request_in_flight_is_not_taken_over_by_the_reconciler(pay: PayGateway) -> None:
    await hold_answers(pay.treasury_url, "hold", seconds=0.8)
    body, idem = voucher(), key()
    task = asyncio.create_task(pay.pay(body, idem))
    # The treasury has accepted the voucher and holds its answer: the call is in flight now, whatever the load.
    while (await treasury_listing(pay.treasury_url))["submissions"] == 0:
        assert not task.done(), task.result().text
        await asyncio.sleep(0.02)
    counts = await pay.payments.reconcile()
    assert counts["busy"] == 1 and counts["resolved"] == 0
    response = await task
    assert response.status_code == 200
    assert (await treasury_listing(pay.treasury_url))["submissions"] == 1


async def test_openapi_documents_the_idempotency_key(pay: PayGateway) -> None:
    async with httpx.AsyncClient() as client:
        schema = (await client.get(pay.gw.url + "/openapi.json")).json()
    operation = schema["paths"]["/v1/services/{service}/{operation}"]["post"]
    names = [parameter["name"] for parameter in operation["parameters"]]
    assert names == ["service", "operation", "Idempotency-Key"]
    assert {"400", "409", "422"} <= set(operation["responses"])


def test_signature_covers_the_idempotency_key_when_present() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from security.signatures import SignatureFailure, parse_signature_params, verify_request
    from security.verifier_process import InlineVerifier

    url, body, private = (
        "http://gw.example/v1/services/treasury/submit-voucher",
        b'{"a":1}',
        Ed25519PrivateKey.generate(),
    )

    def signed(with_key: bool) -> httpx.Request:
        request = httpx.Request("POST", url, content=body, headers={"Idempotency-Key": '"k-1"'} if with_key else {})
        sign_request("POST", url, request.headers, body, key_id="k", private_key=private)
        return request

    def verify(request: httpx.Request) -> None:
        headers = list(request.headers.multi_items())
        params = parse_signature_params(headers)
        asyncio.run(verify_request(InlineVerifier(), "POST", url, headers, body, private.public_key(), params))

    request = signed(with_key=True)
    assert "idempotency-key" in parse_signature_params(list(request.headers.multi_items())).covered
    verify(request)
    request.headers["Idempotency-Key"] = '"k-2"'  # a swapped key no longer verifies
    with pytest.raises(SignatureFailure) as info:
        verify(request)
    assert info.value.code == "signature_invalid"

    plain = signed(with_key=False)
    assert "idempotency-key" not in parse_signature_params(list(plain.headers.multi_items())).covered
    verify(plain)  # without the header, nothing changes for other requests
    plain.headers["Idempotency-Key"] = '"added-later"'
    with pytest.raises(SignatureFailure, match="must be covered"):
        verify(plain)


async def test_a_payment_the_database_forgot_is_not_made_twice(pay: PayGateway) -> None:
    # A database restored from a backup taken before the payment: its intent, outcome and key are gone, the money
    # is not. The caller repeats the request with the same key, as it would after any failure.
    body, idem = voucher(), key()
    first = await pay.pay(body, idem)
    assert first.status_code == 200, first.text
    async with pay.gw.runtime.engine.begin() as connection:
        for table in ("payment_outcomes", "payment_intents"):
            await connection.execute(text(f"DELETE FROM {table} WHERE voucher_no = :v"), {"v": body["voucher_no"]})
        await connection.execute(text("DELETE FROM idempotency_keys"))
    again = await pay.pay(body, idem)
    assert again.status_code == 200, again.text
    assert "idempotent-replayed" not in again.headers  # the gateway had nothing stored: it asked the treasury
    assert again.json()["data"]["treasury_serial"] == first.json()["data"]["treasury_serial"]
    listing = await treasury_listing(pay.treasury_url)
    # Sent once more under the same VoucherNo, refused as a duplicate (3001), settled by voucher-status: paid once.
    assert (listing["accepted"], listing["by_code"]) == (1, {"0000": 1, "3001": 1})
    outcome = await pay.outcome(body["voucher_no"])
    assert outcome is not None and outcome.outcome in {"accepted", "paid"}
