"""Contract tests of the Golden Tax III adapter against its SOAP simulator over real HTTP, XML safety included,
and the golden-tax service through the signed gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters import golden_tax
from adapters.errors import (
    UpstreamError,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamRejected,
    UpstreamSubjectUnknown,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from adapters.fetch_allow import FetchAllowlist
from adapters.golden_tax import GoldenTaxAdapter
from adapters.resilience import ResiliencePolicy
from gateway.upstreams.registry import prepare
from schemas.tax import TaxpayerQuery, TaxpayerYearQuery
from schemas.uscc import make_uscc
from simulators import golden_tax as simulator
from simulators.enterprises import DEMO_USCC, ENTERPRISES, TAX_YEARS
from tests.helpers.calls import last_record
from tests.helpers.gateways import RunningGateway
from tests.helpers.upstreams import PURPOSE, Simulator, grant_all, started_simulator, upstream_gateway

UNKNOWN_USCC = make_uscc("91350203MA0000001")
# Contract tests see every answer as it is: one attempt, a breaker that never opens. Retries and the breaker
# have their own tests (test_resilience.py).
PLAIN = ResiliencePolicy(total_timeout=1.0, max_attempts=1, failure_threshold=10_000)


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[Simulator]:
    async for running in started_simulator(simulator):
        yield running


@pytest.fixture(scope="module")
async def adapter(sim: Simulator) -> AsyncIterator[GoldenTaxAdapter]:
    tax = GoldenTaxAdapter(sim.url, policy=PLAIN)
    await tax.start()
    yield tax
    await tax.close()


@pytest.fixture
async def faults(sim: Simulator) -> AsyncIterator[Simulator]:
    yield sim
    await sim.clear()


async def call(adapter: GoldenTaxAdapter, operation: str, uscc: str, year: int | None = None) -> dict[str, Any]:
    params = TaxpayerQuery(uscc=uscc) if year is None else TaxpayerYearQuery(uscc=uscc, year=year)
    return (await adapter.invoke(operation, params)).data


async def test_registration_matches_the_population(adapter: GoldenTaxAdapter) -> None:
    for enterprise in (next(e for e in ENTERPRISES if e.status == s) for s in ("存续", "在业", "注销", "吊销")):
        data = await call(adapter, "tax-registration", enterprise.uscc)
        assert data["uscc"] == enterprise.uscc and data["name"] == enterprise.name
        assert data["registered"] is (enterprise.status != "注销")
        assert data["status"] == {"存续": "正常", "在业": "正常", "注销": "注销", "吊销": "非正常"}[enterprise.status]
        assert data["tax_authority"].startswith("国家税务总局") and data["tax_authority"].endswith("税务局")
        assert data["registered_on"] == simulator.registered_on(enterprise).isoformat()
        assert data["registered_on"] >= enterprise.established_on.isoformat()


async def test_ratings_for_every_enterprise_and_year(adapter: GoldenTaxAdapter) -> None:
    for enterprise in ENTERPRISES[:60]:
        for year in (*TAX_YEARS, 2020):
            data = await call(adapter, "tax-credit-rating", enterprise.uscc, year)
            assert data == {"uscc": enterprise.uscc, "year": year, "rating": simulator.rating_for(enterprise, year)}
    assert (await call(adapter, "tax-credit-rating", DEMO_USCC, 2025))["rating"] == "A"
    assert (await call(adapter, "tax-credit-rating", DEMO_USCC, 2019))["rating"] is None  # not rated that year


async def test_tax_paid_is_exact(adapter: GoldenTaxAdapter) -> None:
    for enterprise in ENTERPRISES[:60]:
        data = await call(adapter, "annual-tax-paid", enterprise.uscc, 2024)
        expected = simulator.tax_paid_for(enterprise, 2024)
        assert data == {"uscc": enterprise.uscc, "year": 2024, "amount": f"{expected:.2f}"}
        assert Decimal(data["amount"]) == expected
    old = next(e for e in ENTERPRISES if e.established_on.year > 2001)
    assert (await call(adapter, "annual-tax-paid", old.uscc, 2000))["amount"] == "0.00"


async def test_major_tax_violations(adapter: GoldenTaxAdapter) -> None:
    listed = [e for e in ENTERPRISES if e.major_tax_violations]
    assert len(listed) == 6
    for enterprise in listed:
        data = await call(adapter, "major-tax-violation", enterprise.uscc)
        assert data["listed"] is True
        assert data["entries"] == [
            {"reason": entry.reason, "listed_on": entry.listed_on.isoformat(), "authority": entry.authority}
            for entry in enterprise.major_tax_violations
        ]
    assert await call(adapter, "major-tax-violation", DEMO_USCC) == {"uscc": DEMO_USCC, "listed": False, "entries": []}


async def test_unknown_taxpayer_is_its_own_code(adapter: GoldenTaxAdapter) -> None:
    with pytest.raises(UpstreamSubjectUnknown) as caught:
        await call(adapter, "tax-registration", UNKNOWN_USCC)
    error = caught.value
    assert (error.status, error.code, error.upstream_status) == (502, "upstream_subject_unknown", "Client/GT3-1001")
    assert "SOAP Fault Client/GT3-1001: 纳税人识别号不存在" in error.detail
    assert not error.is_transient() and not error.is_upstream_failure()


async def test_other_client_fault_keeps_code_and_string(adapter: GoldenTaxAdapter) -> None:
    with pytest.raises(UpstreamFault) as caught:
        await call(adapter, "annual-tax-paid", DEMO_USCC, 2030)
    error = caught.value
    assert (error.code, error.fault_code, error.fault_string) == (
        "upstream_fault",
        "Client/GT3-1004",
        "2030年度无缴税数据",
    )
    assert not error.receiver and not error.is_transient()


@pytest.mark.parametrize(
    ("plan", "error", "code", "upstream_status"),
    [
        ({"mode": "soap_fault"}, UpstreamFault, "upstream_fault", "Server/GT3-9999"),
        ({"mode": "latency", "latency_ms": 2500}, UpstreamTimeout, "upstream_timeout", "timeout"),
        ({"mode": "status", "status": 503}, UpstreamRejected, "upstream_error", "503"),
        ({"mode": "malformed"}, UpstreamMalformed, "upstream_malformed", "200"),
        ({"mode": "drop"}, UpstreamUnavailable, "upstream_unavailable", None),
    ],
)
async def test_faults_map(
    adapter: GoldenTaxAdapter,
    faults: Simulator,
    plan: dict[str, Any],
    error: type[UpstreamError],
    code: str,
    upstream_status: str | None,
) -> None:
    await faults.fault(**plan, count=1)
    before = await faults.served()
    with pytest.raises(error) as caught:
        await call(adapter, "tax-credit-rating", DEMO_USCC, 2025)
    assert (caught.value.code, caught.value.upstream_status) == (code, upstream_status)
    assert await faults.served() - before == 1
    assert (await call(adapter, "tax-credit-rating", DEMO_USCC, 2025))["rating"] == "A"  # and it recovers


# --- XML safety and contract breaks, from a hostile upstream ----------------------------------------------------

ENV = "http://schemas.xmlsoap.org/soap/envelope/"
GT = "http://www.chinatax.gov.cn/gt3/sjjh/nsrxx/v1"


def _rating_body(inner: str, uscc: str = DEMO_USCC) -> str:
    return (
        f'<soap:Envelope xmlns:soap="{ENV}" xmlns:gt="{GT}"><soap:Body><gt:CxNsxydjResponse>'
        f"<gt:NSRSBH>{uscc}</gt:NSRSBH><gt:PJND>2025</gt:PJND>{inner}</gt:CxNsxydjResponse></soap:Body></soap:Envelope>"
    )


HOSTILE = {
    "dtd": '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
    + _rating_body("<gt:NSXYDJ>&lol2;</gt:NSXYDJ>"),
    "external": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    + _rating_body("<gt:NSXYDJ>&xxe;</gt:NSXYDJ>"),
    "huge": _rating_body("<gt:NSXYDJ>A</gt:NSXYDJ>" + "<!--" + "x" * (golden_tax.MAX_ANSWER + 10) + "-->"),
    "other-taxpayer": _rating_body("<gt:NSXYDJ>A</gt:NSXYDJ>", uscc=UNKNOWN_USCC),
    "bad-rating": _rating_body("<gt:NSXYDJ>E</gt:NSXYDJ>"),
    "bad-decimal": _rating_body("<gt:NSXYDJ>A</gt:NSXYDJ><gt:PJFS>ninety</gt:PJFS>"),
    "not-soap": "<html><body>gateway error</body></html>",
    "soap12": _rating_body("").replace(ENV, "http://www.w3.org/2003/05/soap-envelope"),
}


@pytest.fixture(scope="module")
async def hostile() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=HOSTILE[request.match_info["kind"]], content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{kind}/sjjh/services/NsrxxService", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("dtd", "DTD"),
        ("external", "DTD"),
        ("huge", "exceeds"),
        ("other-taxpayer", "different taxpayer"),
        ("bad-rating", "rating"),
        ("bad-decimal", "does not match the WSDL"),
        ("not-soap", "not a SOAP 1.1 envelope"),
        ("soap12", "not a SOAP 1.1 envelope"),
    ],
)
async def test_hostile_or_broken_answers_are_malformed(hostile: str, kind: str, reason: str) -> None:
    tax = GoldenTaxAdapter(f"{hostile}/{kind}/sjjh/services/NsrxxService", policy=PLAIN)
    await tax.start()
    try:
        with pytest.raises(UpstreamMalformed) as caught:
            await call(tax, "tax-credit-rating", DEMO_USCC, 2025)
    finally:
        await tax.close()
    assert caught.value.code == "upstream_malformed"
    assert reason in caught.value.detail or reason in str(caught.value.__cause__)


def test_contract_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import zeep.wsdl

    first = GoldenTaxAdapter("http://127.0.0.1:9")
    assert golden_tax.contract_bundle() is golden_tax.contract_bundle()  # the files are read once per process
    parsed: list[Any] = []
    original = zeep.wsdl.Document.__init__
    monkeypatch.setattr(
        zeep.wsdl.Document, "__init__", lambda self, *a, **k: parsed.append(1) or original(self, *a, **k)
    )
    operation = first.engine.operations["CxNsxydj"]
    for year in TAX_YEARS:
        first.engine.envelope(operation, {"NSRSBH": DEMO_USCC, "PJND": year})
    assert parsed == []  # building messages reuses the parsed WSDL
    GoldenTaxAdapter("http://127.0.0.1:9")
    assert parsed == [1]  # only a new upstream (adapter) parses it again


async def test_simulator_refuses_bad_requests(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session:
        url = sim.url + simulator.SERVICE_PATH
        async with session.post(url, data=b"<not-xml", headers={"Content-Type": "text/xml"}) as response:
            text = await response.text()
            assert response.status == 500 and "GT3-1000" in text and "soap:Client" in text
        async with session.get(url + "?wsdl") as response:
            wsdl = await response.text()
            assert response.status == 200 and f'location="{sim.url}{simulator.SERVICE_PATH}"' in wsdl


async def test_its_wsdl_registers_by_url_as_a_district_upstream(sim: Simulator) -> None:
    # The same exchange, registered generically from its served WSDL: wire names, derived types, same answers.
    import asyncio

    prepared = await asyncio.to_thread(
        prepare,
        "gt3-generic",
        "wsdl",
        source=sim.url + simulator.SERVICE_PATH + "?wsdl",
        fetch_allow=FetchAllowlist.from_setting("127.0.0.1"),  # the operator allows the simulator's address
    )
    adapter = prepared.adapter
    assert len(prepared.spec.bundle.documents) == 2  # the WSDL and the XSD it imports, fetched over HTTP
    await adapter.start()
    try:
        operation = adapter.operations["CxNsxydj"]
        data = (
            await adapter.invoke("CxNsxydj", operation.input_model.model_validate({"NSRSBH": DEMO_USCC, "PJND": 2025}))
        ).data
        assert data == {"NSRSBH": DEMO_USCC, "PJND": 2025, "NSXYDJ": "A", "PJFS": "95.00", "PJRQ": "2026-04-20"}
        schema = operation.output_model.model_json_schema()
        assert schema["properties"]["NSXYDJ"]["anyOf"][0]["enum"] == ["A", "B", "M", "C", "D"]
    finally:
        await adapter.close()


# --- through the gateway -----------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def gw(
    request: pytest.FixtureRequest, tmp_path: Path, credit_url: str, sim: Simulator
) -> AsyncIterator[RunningGateway]:
    async for running in upstream_gateway(request.param, tmp_path, {"credit": credit_url, "golden-tax": sim.url}):
        await grant_all(running, "golden-tax")
        yield running


async def test_golden_tax_through_the_gateway(gw: RunningGateway) -> None:
    async with gw.client() as client:
        listing = (await client.get("/v1/services")).json()["services"]
        tax = next(s for s in listing if s["service"] == "golden-tax")
        assert [op["operation"] for op in tax["operations"]] == [
            "tax-registration",
            "tax-credit-rating",
            "annual-tax-paid",
            "major-tax-violation",
        ]
        response = await client.post(
            "/v1/services/golden-tax/tax-credit-rating",
            json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC, "year": 2025}},
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"] == {"uscc": DEMO_USCC, "year": 2025, "rating": "A"}
        assert response.json()["meta"]["source"] == "金税三期 Golden Tax III"
        record = await last_record(gw)
        assert (record["service"], record["operation"], record["upstream_status"]) == (
            "golden-tax",
            "tax-credit-rating",
            "200",
        )
        unknown = await client.post(
            "/v1/services/golden-tax/tax-registration", json={"purpose": PURPOSE, "params": {"uscc": UNKNOWN_USCC}}
        )
        assert unknown.status_code == 502 and unknown.json()["code"] == "upstream_subject_unknown"
        assert "GT3-1001" in unknown.json()["detail"] and "纳税人识别号不存在" in unknown.json()["detail"]
        record = await last_record(gw)
        assert (record["decision"], record["reason_code"], record["upstream_status"]) == (
            "failed",
            "upstream_subject_unknown",
            "Client/GT3-1001",
        )
        early = await client.post(
            "/v1/services/golden-tax/annual-tax-paid",
            json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC, "year": 1990}},
        )
        assert early.status_code == 422 and early.json()["errors"][0]["field"] == "params/year"
