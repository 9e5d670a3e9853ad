"""Hostile inputs that once gave 500s: JSON nested 100,000 deep (RecursionError in the exact parser of unsafe
operations) and a forged audit cursor holding an integer beyond 64 bits (OverflowError on SQLite). Each is a 422
with a stable code, on every route and every path that parses JSON."""

from __future__ import annotations

import base64
import json
import random
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from adapters.contracts import ContractError, parse_openapi_document
from adapters.errors import UpstreamMalformed
from adapters.jsondepth import MAX_JSON_DEPTH, JsonTooDeep, json_depth_exceeds, loads_bounded
from gateway.http.json_bodies import load_body
from gateway.http.problems import Problem
from gateway.sharing.schedule_file import ScheduleInvalid, read_schedule
from gateway.upstreams.registry import prepare
from tests.helpers.calls import assert_problem
from tests.helpers.district_upstreams import serving
from tests.helpers.gateways import PURPOSE, RunningGateway

DEEP = b'{"purpose": "XM-2025-001", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_depth_is_counted_outside_strings() -> None:
    assert not json_depth_exceeds(nested(MAX_JSON_DEPTH))
    assert json_depth_exceeds(nested(MAX_JSON_DEPTH + 1))
    assert json_depth_exceeds(b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1))
    brackets_in_strings = orjson.dumps({"text": "[{" * 10_000, "escaped": '\\"[[[' * 100})
    assert not json_depth_exceeds(brackets_in_strings)
    wide = orjson.dumps([[i] for i in range(10_000)])  # many brackets, depth 2
    assert not json_depth_exceeds(wide)
    # Without a backslash anywhere strings are found by their quotes alone; with one, by the escape-aware pattern.
    deep_after = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    for text in (b'"]]]}}}"', b'"a\\"b]]]"', b'"]\\\\"'):  # plain; an escaped quote; an escaped backslash
        assert not json_depth_exceeds(b'{"t": ' + text.replace(b"]", b"[") * 50 + b"}"), text
        assert json_depth_exceeds(b"[" + text + b", " + deep_after + b"]"), text
    assert json_depth_exceeds(b'{"a": "[[", "b": ' + deep_after + b"}")
    assert json_depth_exceeds(b'"' + b"[" * 1_000)  # after an unterminated string's quote, brackets count


def test_strings_found_by_quotes_alone_are_those_the_escape_aware_pattern_finds() -> None:
    from adapters import jsondepth

    rng = random.Random(7)
    for _ in range(3_000):
        data = bytes(rng.choice(b'[]{}"a ,') for _ in range(rng.randrange(0, 40)))
        brackets = jsondepth._outside_strings(data).translate(None, jsondepth._NOT_BRACKETS)
        assert brackets == jsondepth._STRING.sub(b"", data).translate(None, jsondepth._NOT_BRACKETS), data


@pytest.mark.parametrize("exact", [False, True])
def test_a_deep_body_is_a_422_never_a_recursion_error(exact: bool) -> None:
    with pytest.raises(Problem) as caught:
        load_body(DEEP, exact=exact)
    assert (caught.value.status, caught.value.code) == (422, "json_too_deep")
    assert load_body(b'{"amount": 1.10}', exact=True) == {"amount": Decimal("1.10")}
    with pytest.raises(Problem) as bad:
        load_body(b'{"amount": NaN}', exact=True)
    assert bad.value.code == "invalid_json"


def test_python_json_itself_would_crash() -> None:
    # What the bound is for: without it the exact parser raises RecursionError, which became a 500.
    with pytest.raises(RecursionError):
        json.loads(DEEP)
    with pytest.raises(JsonTooDeep):
        loads_bounded(DEEP)


@pytest.mark.parametrize(
    ("path", "who"),
    [
        ("/v1/services/credit/dishonest-debtor", "platform"),
        ("/v1/services/treasury/submit-voucher", "platform"),  # an unsafe operation, read exactly
        ("/v1/sharing-requests", "platform"),
        ("/v1/grants", "admin"),
        ("/v1/catalog", "admin"),
        ("/v1/audit/records/x/payload", "officer"),
    ],
)
async def test_every_route_refuses_deep_json_signed_or_not(gateway: RunningGateway, path: str, who: str) -> None:
    identity = getattr(gateway, who)
    headers = {"content-type": "application/json"}
    async with gateway.client(identity) as client:
        signed = await client.post(path, content=DEEP, headers=headers)
    body = assert_problem(signed, 422, "json_too_deep")
    assert body["errors"][0]["type"] == "json_too_deep"
    async with httpx_plain(gateway) as client:
        unsigned = await client.post(path, content=DEEP, headers=headers)
    assert_problem(unsigned, 422, "json_too_deep")
    async with gateway.client() as client:  # and the gateway is still well
        ok = await client.post(
            "/v1/services/credit/dishonest-debtor", json={"purpose": PURPOSE, "params": {"uscc": "91350213MAG6BDRC7A"}}
        )
    assert ok.status_code == 200, ok.text


def httpx_plain(gateway: RunningGateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=30)


def _cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


async def test_a_forged_cursor_beyond_64_bits_is_a_422(gateway: RunningGateway) -> None:
    async with gateway.client() as platform:
        for _ in range(2):
            await platform.post("/v1/services/credit/dishonest-debtor", json={"purpose": "NOT-GRANTED", "params": {}})
    async with gateway.client(gateway.officer) as client:
        first = (await client.get("/v1/audit/records", params={"limit": "1"})).json()
        assert first["next_cursor"], first
        real = orjson.loads(base64.urlsafe_b64decode(first["next_cursor"] + "=" * (-len(first["next_cursor"]) % 4)))
        assert set(real) == {"t", "c", "h", "f"}
        forged = [
            {**real, "t": 1 << 63},
            {**real, "h": 1 << 64},
            {**real, "t": -1},
            {**real, "h": 1e30},
            {**real, "t": True},
        ]
        for position in forged:
            response = await client.get("/v1/audit/records", params={"limit": "1", "cursor": _cursor(position)})
            body = assert_problem(response, 422, "invalid_cursor")
            assert body["errors"][0]["field"] == "query/cursor"
        huge = base64.urlsafe_b64encode(
            b'{"t": 99999999999999999999999999, "c": "node-1", "h": 1, "f": "' + real["f"].encode() + b'"}'
        ).decode()
        assert_problem(await client.get("/v1/audit/records", params={"cursor": huge}), 422, "invalid_cursor")
        checkpoints = await client.get("/v1/audit/checkpoints", params={"after": str(1 << 70)})
        assert checkpoints.status_code == 422, checkpoints.text
        assert checkpoints.json()["errors"][0]["field"] == "query/after"


async def test_a_grant_quota_beyond_any_column_is_a_422(gateway: RunningGateway) -> None:
    body = {
        "caller_id": "platform",
        "service": "credit",
        "operation": "dishonest-debtor",
        "purpose": "HUGE-1",
        "fields": ["listed"],
        "valid_to": "2099-01-01T00:00:00+00:00",
        "daily_quota": 1 << 40,  # past the 32-bit column
    }
    async with gateway.client(gateway.admin) as client:
        response = await client.post("/v1/grants", json=body)
    assert assert_problem(response, 422, "quota_invalid")["errors"][0]["field"] == "daily_quota"


def test_a_deep_contract_is_refused() -> None:
    for document in (b'{"openapi": "3.0.0", "x": ' + nested(100_000) + b"}", b"openapi: 3.0.0\nx: " + nested(100_000)):
        with pytest.raises(ContractError, match="nested"):
            parse_openapi_document("api", document)


async def test_a_deep_upstream_answer_is_malformed_not_a_crash() -> None:
    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=b'{"x": ' + nested(100_000) + b"}", content_type="application/json")

    contract = orjson.dumps(
        {
            "openapi": "3.0.3",
            "info": {"title": "t", "version": "1"},
            "servers": [{"url": "http://district.example"}],
            "paths": {
                "/deep": {
                    "get": {
                        "operationId": "deep",
                        "responses": {
                            "200": {
                                "description": "ok",
                                "content": {"application/json": {"schema": {"type": "object"}}},
                            }
                        },
                    }
                }
            },
        }
    ).decode()
    app = web.Application()
    app.router.add_get("/deep", deep)
    async with serving(app) as url:
        adapter = prepare("deep", "openapi", files={"api.json": contract}, root="api.json", endpoint=url).adapter
        await adapter.start()
        try:
            with pytest.raises(UpstreamMalformed):
                await adapter.invoke("deep", adapter.operations["deep"].input_model())
        finally:
            await adapter.close()


def test_a_deep_holiday_schedule_is_refused_not_a_crash() -> None:
    # Block style nests without brackets, so only the YAML reader itself can refuse it (PyYAML recurses).
    deep = "".join(" " * level + "a:\n" for level in range(3000)) + " " * 3000 + "b"
    with pytest.raises(ScheduleInvalid) as caught:
        read_schedule(deep, csv_format=False)
    assert caught.value.faults[0].code == "file_invalid" and "deeply" in caught.value.faults[0].message


def test_a_schedule_csv_the_csv_module_cannot_read_is_a_fault_not_a_crash() -> None:
    # The fuzz run's body: a carriage return alone inside an unquoted field was a csv.Error, so a 500.
    stray = "date,kind,festival\n2027-01-01,holiday,元\r旦x\n"
    with pytest.raises(ScheduleInvalid):
        read_schedule(stray, csv_format=True, year=2027, source="test")
    quoted = 'date,kind,festival\n2027-01-01,holiday,"元\r\n旦"\n'  # a line break inside quotes is data
    assert read_schedule(quoted, csv_format=True, year=2027, source="test").holidays == {date(2027, 1, 1): "元\r\n旦"}
    # A field over the csv module's limit (128 KiB) is what it refuses itself: one fault of the file, with its line.
    huge = "date,kind,festival\n2027-01-01,holiday," + "元" * 200_000 + "\n"
    with pytest.raises(ScheduleInvalid) as caught:
        read_schedule(huge, csv_format=True, year=2027, source="test")
    assert [(fault.line, fault.code) for fault in caught.value.faults][:1] == [(2, "file_invalid")]
