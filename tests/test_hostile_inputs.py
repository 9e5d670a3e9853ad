"""Hostile input the gateway already refuses, pinned end to end through a real gateway over real sockets.

From a hostile upstream: a 50 MB answer, an endless one, JSON nested 100,000 deep, invalid UTF-8, `1e999`, and SOAP
answers with XXE, billion laughs or a DTD. From an admin: contracts (WSDL, XSD, OpenAPI YAML) with the same. From a
caller: bodies nested 100,000 deep, invalid UTF-8, `1e999`, NaN, full-width USCCs, and traversal in the URL. Each is
refused with its problem code and the call is audited; nothing reaches what it aimed at. The adapters' own unit tests
(test_golden_tax, test_treasury, test_upstreams, test_credit) cover the parsers; these cover the whole path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web

from gateway.access import grants as grant_rows
from gateway.runtime import build_adapters
from gateway.settings import load_settings
from gateway.storage import db
from schemas.api import GrantIn
from security.signatures import sign_request
from tests.helpers.calls import last_record
from tests.helpers.district_upstreams import EXAMPLES, serving
from tests.helpers.gateways import PURPOSE, RunningGateway, running_gateway
from tests.helpers.treasury import voucher

USCC = "91110000600037341L"
PASSWD_MARK = "root:x:0:0"  # what /etc/passwd would show, had an entity been resolved
MB = 1024 * 1024
DEEP = 100_000
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WRAPPED = "urn:example:district:wrapped"
FILES = {
    name: (EXAMPLES / name).read_text()
    for name in ("district-wrapped.wsdl", "district-types.xsd", "district-common.xsd")
}


def soap_answer(prolog: str, amount: str = "1.00") -> str:
    return (
        f'<?xml version="1.0"?>{prolog}<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body>'
        f'<w:GetSubsidyResponse xmlns:w="{WRAPPED}"><w:uscc>{USCC}</w:uscc><w:year>2025</w:year>'
        f"<w:amount>{amount}</w:amount><w:level>gold</w:level><w:paidOn>2025-03-31</w:paidOn>"
        "</w:GetSubsidyResponse></soap:Body></soap:Envelope>"
    )


LAUGHS = (
    '<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
    + "]>"
)


@dataclass
class Hostile:
    """An upstream that answers as it is told: `credit` and `soap` name what it sends next."""

    url: str = ""
    credit: str = "ok"
    soap: str = "ok"
    sent: dict[str, int] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    dtd_fetches: int = 0


def credit_json(data: str) -> bytes:
    return ('{"code": "0000", "message": "成功", "data": ' + data + "}").encode()


async def _stream(request: web.Request, hostile: Hostile, declared: int | None) -> web.StreamResponse:
    """Write 64 KiB chunks until the reader hangs up (or 200 MB, a bound the test never reaches)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    if declared is not None:
        response.content_length = declared
    await response.prepare(request)
    chunk = b" " * 65536
    sent = 0
    try:
        while sent < 200 * MB:
            await response.write(chunk)
            sent += len(chunk)
        hostile.stopped[hostile.credit] = "bound"
    except (ConnectionResetError, ConnectionError, RuntimeError) as exc:
        hostile.stopped[hostile.credit] = type(exc).__name__
    hostile.sent[hostile.credit] = sent
    return response


def hostile_app(hostile: Hostile) -> web.Application:
    async def credit(request: web.Request) -> web.StreamResponse:
        mode = hostile.credit
        if mode == "declared-50MB":
            return await _stream(request, hostile, declared=50 * MB)
        if mode == "endless":
            return await _stream(request, hostile, declared=None)
        body = {
            "ok": credit_json(json.dumps({"tyshxydm": USCC, "sfsx": "0", "ajxx": []})),
            "deep": credit_json("[" * DEEP + "]" * DEEP),
            "invalid-utf8": credit_json('{"tyshxydm": "@", "sfsx": "0"}').replace(b"@", b"\xff\xfe"),
            "1e999": credit_json('{"sfsx": 1e999, "ajxx": []}'),
            "nan": credit_json('{"sfsx": NaN, "ajxx": []}'),
        }[mode]
        return web.Response(body=body, content_type="application/json")

    async def soap(request: web.Request) -> web.Response:
        await request.read()
        prolog = {
            "ok": "",
            "xxe": '<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
            "laughs": LAUGHS,
            "external-dtd": f'<!DOCTYPE x SYSTEM "{hostile.url}/evil.dtd">',
            "parameter-entity": f'<!DOCTYPE x [<!ENTITY % p SYSTEM "{hostile.url}/evil.dtd"> %p;]>',
        }[hostile.soap]
        amount = {"xxe": "&xxe;", "laughs": "&lol9;"}.get(hostile.soap, "1.00")
        return web.Response(text=soap_answer(prolog, amount), content_type="text/xml")

    async def dtd(request: web.Request) -> web.Response:
        hostile.dtd_fetches += 1
        return web.Response(text='<!ENTITY xxe SYSTEM "file:///etc/passwd">', content_type="application/xml-dtd")

    app = web.Application()
    app.router.add_get("/api/credit/v1/dishonest-debtors", credit)
    app.router.add_post("/ws/district", soap)
    app.router.add_get("/evil.dtd", dtd)
    return app


@pytest.fixture(scope="module")
async def hostile() -> AsyncIterator[Hostile]:
    state = Hostile()
    async with serving(hostile_app(state)) as url:
        state.url = url
        yield state


@pytest.fixture(scope="module")
async def gw(hostile: Hostile, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    """A gateway (SQLite) whose credit, treasury and district upstreams are the hostile server."""
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("hostile"),
        upstream_urls={"credit": hostile.url, "treasury": hostile.url},
        upstream_timeout=5.0,
        # One attempt, and a breaker that never opens: each test sees its own refusal, not the previous ones'.
        upstream_policies={"credit": {"max_attempts": 1, "failure_threshold": 1000}},
    )
    await db.upgrade_async(settings)
    engine = db.create_engine(settings)
    adapters = build_adapters(settings)
    async with running_gateway(settings) as running:
        async with db.sessionmaker(engine)() as session:
            submit = adapters["treasury"].operations["submit-voucher"]
            grant = GrantIn(
                caller_id="platform",
                service="treasury",
                operation="submit-voucher",
                purpose=PURPOSE,
                fields=list(submit.fields),
                valid_to=datetime.now(UTC) + timedelta(days=1),
            )
            await grant_rows.add_grant(session, grant, adapters)
        await engine.dispose()
        running.runtime.directory.invalidate()
        async with running.client(running.admin) as admin:
            body = {
                "name": "hostile-district",
                "owner_department": "湖里区数据管理局",
                "kind": "wsdl",
                "files": FILES,
                "root": "district-wrapped.wsdl",
                "endpoint": f"{hostile.url}/ws/district",
                "safe": ["GetSubsidy"],
                "policy": {"max_attempts": 1, "failure_threshold": 1000},
            }
            assert (await admin.post("/v1/upstreams", json=body)).status_code == 201
            district_grant = {
                "caller_id": "platform",
                "service": "hostile-district",
                "operation": "GetSubsidy",
                "purpose": PURPOSE,
                "fields": ["uscc", "amount"],
                "valid_to": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            }
            assert (await admin.post("/v1/grants", json=district_grant)).status_code == 201
        yield running


async def invoke(gw: RunningGateway, service: str, operation: str, params: dict[str, Any]) -> httpx.Response:
    async with gw.client() as client:
        return await client.post(f"/v1/services/{service}/{operation}", json={"purpose": PURPOSE, "params": params})


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code, problem
    assert PASSWD_MARK not in response.text
    return problem


# --- from a hostile upstream --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["declared-50MB", "endless"])
async def test_oversized_and_endless_answers_are_cut(gw: RunningGateway, hostile: Hostile, mode: str) -> None:
    hostile.credit = mode
    response = await invoke(gw, "credit", "dishonest-debtor", {"uscc": USCC})
    problem = assert_problem(response, 502, "upstream_malformed")
    assert "exceeds" in problem["detail"]
    for _ in range(100):  # the writer notices the closed connection on its next writes
        if mode in hostile.stopped:
            break
        await asyncio.sleep(0.05)
    assert hostile.stopped[mode] != "bound", "the gateway kept reading"
    assert hostile.sent[mode] < 16 * MB, f"{hostile.sent[mode]} bytes left the upstream before the gateway hung up"
    record = await last_record(gw)
    assert (record["decision"], record["reason_code"]) == ("failed", "upstream_malformed")


@pytest.mark.parametrize("mode", ["deep", "invalid-utf8", "1e999", "nan"])
async def test_json_answers_that_break_json_are_malformed(gw: RunningGateway, hostile: Hostile, mode: str) -> None:
    hostile.credit = mode
    response = await invoke(gw, "credit", "dishonest-debtor", {"uscc": USCC})
    assert_problem(response, 502, "upstream_malformed")


@pytest.mark.parametrize("mode", ["xxe", "laughs", "external-dtd", "parameter-entity"])
async def test_soap_answers_with_a_dtd_are_malformed(gw: RunningGateway, hostile: Hostile, mode: str) -> None:
    hostile.soap = mode
    fetches = hostile.dtd_fetches
    response = await invoke(gw, "hostile-district", "GetSubsidy", {"uscc": USCC, "year": 2025})
    problem = assert_problem(response, 502, "upstream_malformed")
    # libxml2 itself stops the billion laughs (entity amplification) before zeep sees its DTD.
    assert any(reason in problem["detail"] for reason in ("DTD", "entities", "not well-formed")), problem["detail"]
    assert hostile.dtd_fetches == fetches, "the gateway fetched the answer's external DTD"


async def test_the_hostile_district_answers_when_it_behaves(gw: RunningGateway, hostile: Hostile) -> None:
    """The control: the same route and upstream answer 200 with a clean answer, so the refusals above are the DTDs'."""
    hostile.soap, hostile.credit = "ok", "ok"
    district = await invoke(gw, "hostile-district", "GetSubsidy", {"uscc": USCC, "year": 2025})
    assert district.status_code == 200, district.text
    assert district.json()["data"] == {"uscc": USCC, "amount": "1.00"}
    credit = await invoke(gw, "credit", "dishonest-debtor", {"uscc": USCC})
    assert credit.status_code == 200 and credit.json()["data"]["listed"] is False


# --- contracts from an admin --------------------------------------------------------------------------------------

WSDL = FILES["district-wrapped.wsdl"]
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


def with_prolog(document: str, prolog: str) -> str:
    """The document with a DOCTYPE after its XML declaration (or first, without one)."""
    if XML_DECLARATION in document:
        return document.replace(XML_DECLARATION, XML_DECLARATION + prolog, 1)
    return prolog + document


@pytest.mark.parametrize(
    ("kind", "files", "root", "code"),
    [
        (
            "wsdl",
            {
                **FILES,
                "district-wrapped.wsdl": with_prolog(WSDL, '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'),
            },
            "district-wrapped.wsdl",
            "contract_unsupported",
        ),
        (
            "wsdl",
            {**FILES, "district-wrapped.wsdl": with_prolog(WSDL, LAUGHS)},
            "district-wrapped.wsdl",
            "contract_unsupported",
        ),
        (
            "wsdl",
            {
                **FILES,
                "district-types.xsd": with_prolog(
                    FILES["district-types.xsd"], '<!DOCTYPE s SYSTEM "http://127.0.0.1:9/evil.dtd">'
                ),
            },
            "district-wrapped.wsdl",
            "contract_unsupported",
        ),
        (
            "openapi",
            {"api.yaml": "a: &a [" + "x, " * 9 + "x]\nb: &b [" + "*a, " * 9 + "*a]\nc: [" + "*b, " * 9 + "*b]\n"},
            "api.yaml",
            "contract_invalid",
        ),
        ("openapi", {"api.json": "[" * DEEP + "]" * DEEP}, "api.json", "contract_invalid"),
    ],
    ids=["wsdl-xxe", "wsdl-billion-laughs", "xsd-external-dtd", "yaml-alias-bomb", "json-100k-deep"],
)
async def test_hostile_contracts_are_refused(
    gw: RunningGateway, kind: str, files: dict[str, str], root: str, code: str
) -> None:
    body = {"name": "evil-district", "kind": kind, "files": files, "root": root, "endpoint": "http://127.0.0.1:9/"}
    body["owner_department"] = "湖里区数据管理局"
    async with gw.client(gw.admin) as admin:
        response = await admin.post("/v1/upstreams", json=body)
        assert_problem(response, 422, code)
        assert "evil-district" not in {u["name"] for u in (await admin.get("/v1/upstreams")).json()}


# --- from a caller ------------------------------------------------------------------------------------------------


async def _post_raw(gw: RunningGateway, path: str, body: bytes, who: str = "platform") -> httpx.Response:
    identity = gw.admin if who == "admin" else gw.platform
    async with gw.client(identity) as client:
        return await client.post(path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("path", "who"),
    [
        ("/v1/services/credit/dishonest-debtor", "platform"),
        ("/v1/services/treasury/submit-voucher", "platform"),  # read exactly (decimals), by another parser
        ("/v1/grants", "admin"),
        ("/v1/callers", "admin"),
        ("/v1/upstreams", "admin"),
    ],
)
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * DEEP + b"]" * DEEP, "json_too_deep"),
        (b'{"purpose": "' + PURPOSE.encode() + b'", "params": {"uscc": "\xff\xfe"}}', "invalid_json"),
        (b'{"purpose": "' + PURPOSE.encode() + b'", "params": {"uscc": NaN}}', "invalid_json"),
        (b'{"purpose": "' + PURPOSE.encode() + b'", "params": {"uscc": Infinity}}', "invalid_json"),
    ],
    ids=["100k-deep", "invalid-utf8", "NaN", "Infinity"],
)
async def test_bodies_that_are_not_json_are_422(
    gw: RunningGateway, path: str, who: str, body: bytes, code: str
) -> None:
    response = await _post_raw(gw, path, body, who)
    assert_problem(response, 422, code)
    record = await last_record(gw)
    assert (record["decision"], record["reason_code"]) == ("refused", code)


@pytest.mark.parametrize(
    ("path", "who", "code"),
    [
        # orjson refuses a number beyond a double; the exact reader of payments takes it as a Decimal, which the
        # voucher's amount checks refuse (test_payment_amounts_of_1e999_are_refused_before_the_treasury).
        ("/v1/services/credit/dishonest-debtor", "platform", "invalid_json"),
        ("/v1/grants", "admin", "invalid_json"),
    ],
)
async def test_numbers_beyond_a_double_are_422(gw: RunningGateway, path: str, who: str, code: str) -> None:
    body = b'{"purpose": "' + PURPOSE.encode() + b'", "params": {"uscc": 1e999}}'
    assert_problem(await _post_raw(gw, path, body, who), 422, code)


async def test_payment_amounts_of_1e999_are_refused_before_the_treasury(gw: RunningGateway) -> None:
    bad = voucher(amounts=("1e999",), pay_amt="1e999")
    raw = json.dumps({"purpose": PURPOSE, "params": bad}).replace('"1e999"', "1e999").encode()
    async with gw.client() as client:
        response = await client.post(
            "/v1/services/treasury/submit-voucher",
            content=raw,
            headers={"content-type": "application/json", "Idempotency-Key": '"hostile-1e999"'},
        )
    problem = assert_problem(response, 422, "validation_failed")
    assert {error["field"] for error in problem["errors"]} >= {"params/pay_amt"}


@pytest.mark.parametrize(
    "uscc",
    ["９１１１００００６０００３７３４１Ｌ", "91110000600037341Ｌ", " 91110000600037341L", "91110000600037341L\u200b"],
    ids=["full-width", "full-width-check", "leading-space", "zero-width-space"],
)
async def test_lookalike_usccs_are_refused_not_normalised(gw: RunningGateway, uscc: str) -> None:
    response = await invoke(gw, "credit", "dishonest-debtor", {"uscc": uscc})
    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"][0]["field"] == "params/uscc"


async def _raw_http(gw: RunningGateway, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """A request with exactly this request-target (no client normalises it), signed as the platform."""
    host_port = gw.url.removeprefix("http://")
    headers: dict[str, str] = {"host": host_port}
    sign_request(
        method,
        f"{gw.url}{target}",
        headers,
        b"",
        key_id=gw.platform.key_id,
        private_key=gw.platform.private_key,
    )
    host, port = host_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    writer.write(("\r\n".join([*lines, "content-length: 0", "connection: close", "", ""])).encode("latin-1"))
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer_headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), answer_headers, body


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1/catalog/..%2F..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/v1/catalog/%2e%2e%2f%2e%2e%2fkeys%2fmaster.key"),
        ("GET", "/v1/grants/..%2F..%2Fcallers"),
        ("POST", "/v1/services/credit/..%2F..%2F..%2Fcallers"),
        ("POST", "/v1/services/%2e%2e/%2e%2e"),
        ("GET", "/v1/services/../callers"),
        ("GET", "/v1/sharing-requests/..%5C..%5Cadmin"),
        ("GET", "/v1/audit/records/%2e%2e%2f%2e%2e%2fcallers"),
    ],
)
async def test_traversal_in_the_url_reaches_nothing_else(gw: RunningGateway, method: str, target: str) -> None:
    status, headers, body = await _raw_http(gw, method, target)
    # 405: `..` stood as a service name on the invoke route, which takes POST only; it reached nothing else.
    assert status in (403, 404, 405, 422), (status, body[:300])
    assert headers["content-type"] == "application/problem+json", (status, body[:300])
    problem = json.loads(body)
    assert problem["status"] == status and problem["code"]
    text = body.decode(errors="replace")
    assert PASSWD_MARK not in text and "BEGIN" not in text and '"caller_id"' not in text
