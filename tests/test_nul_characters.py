"""A NUL character (U+0000) anywhere text comes in is a 422 `nul_character` naming where, on both backends.

PostgreSQL's text cannot hold one: before, a NUL in a JSON field, a path or a query parameter, or a console form
ended in a 500 there (found by a 15-minute Schemathesis run and probes after it), and SQLite stored it as is.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.helpers.console import console_world, csrf_of, signed_in
from tests.helpers.gateways import RunningGateway

NUL = "\u0000"


def assert_nul_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "nul_character", problem
    assert problem["errors"] == [
        {
            "field": field,
            "message": "holds a NUL character (U+0000), which no text here may hold",
            "type": "nul_character",
        }
    ]


async def test_json_fields_paths_and_queries_holding_a_nul_are_refused(gateway: RunningGateway) -> None:
    async with gateway.client(gateway.admin) as admin:
        caller = {"caller_id": "nul-probe", "name": f"a{NUL}b", "department": "市大数据中心", "roles": ["platform"]}
        assert_nul_refused(await admin.post("/v1/callers", json=caller), "name")
        nested = {**caller, "name": "ok", "keys": [{"key_id": "k1", "public_key": f"x{NUL}"}]}
        assert_nul_refused(await admin.post("/v1/callers", json=nested), "keys/0/public_key")
        # The escape written out as text (a backslash, then u0000) is not a NUL: no false refusal.
        literal = {**caller, "caller_id": "nul-literal", "name": "a\\u0000b"}
        created = await admin.post("/v1/callers", json=literal)
        assert created.status_code == 201 and created.json()["name"] == "a\\u0000b", created.text
        for path, where in [
            ("/v1/sharing-requests/a%00b", "path"),
            ("/v1/catalog/a%00b", "path"),
            ("/v1/batches/a%00b", "path"),
            ("/v1/audit/records?purpose=a%00b", "query"),
        ]:
            assert_nul_refused(await admin.get(path), where)
    async with gateway.client() as platform:
        body = {"purpose": "XM-2025-001", "params": {"uscc": f"91350213MAG6BDRC7A{NUL}"}}
        answer = await platform.post(
            "/v1/services/credit/dishonest-debtor",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert_nul_refused(answer, "params/uscc")


async def test_a_console_sign_in_holding_a_nul_is_refused(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as browser:
        page = await browser.get("/console/login")
        # The login cookie is Secure and this is plain HTTP, so httpx would not send it back: send it by hand.
        cookie = page.headers["set-cookie"].split(";", 1)[0]
        answer = await browser.post(
            "/console/login",
            data={"csrf_token": csrf_of(page.text), "username": f"ab{NUL}c", "password": "x", "totp": "1"},
            headers={"cookie": cookie},
        )
    assert answer.status_code == 422 and "NUL" in answer.text, answer.text


async def test_a_console_form_holding_a_nul_is_refused(tmp_path: Path, credit_url: str) -> None:
    async with console_world(tmp_path, credit_url) as world, signed_in(world, "auditor") as client:
        page = await client.get("/console/audit")
        answer = await client.post("/console/logout", data={"csrf_token": csrf_of(page.text), "note": f"a{NUL}"})
        assert answer.status_code == 422 and "NUL" in answer.text, answer.text
        still = await client.get("/console/audit")
        assert still.status_code == 200, "the refused form did not sign the officer out"


async def test_a_calendar_file_holding_a_nul_is_refused(gateway: RunningGateway) -> None:
    schedule = f"date,kind,festival\n2027-01-01,holiday,元{NUL}旦\n".encode()
    async with gateway.client(gateway.admin) as admin:
        answer = await admin.post(
            "/v1/calendar/schedules?year=2027&source=test", content=schedule, headers={"content-type": "text/csv"}
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "nul_character", answer.text
