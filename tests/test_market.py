"""Contract tests of the market-registration adapter against its REST simulator, and the service through the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.errors import UpstreamMalformed, UpstreamRejected, UpstreamSubjectUnknown, UpstreamTimeout
from adapters.http import JsonResponse
from adapters.market import MarketAdapter
from adapters.resilience import ResiliencePolicy
from schemas.market import EnterpriseProfile, EnterpriseQuery
from schemas.uscc import make_uscc
from simulators import market as simulator
from simulators.enterprises import DEMO_USCC, ENTERPRISES
from tests.helpers.calls import last_record
from tests.helpers.gateways import RunningGateway
from tests.helpers.upstreams import PURPOSE, Simulator, grant_all, started_simulator, upstream_gateway

UNKNOWN_USCC = make_uscc("91350203MA0000001")
PLAIN = ResiliencePolicy(total_timeout=1.0, max_attempts=1, failure_threshold=10_000)


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[Simulator]:
    async for running in started_simulator(simulator):
        yield running


@pytest.fixture(scope="module")
async def adapter(sim: Simulator) -> AsyncIterator[MarketAdapter]:
    market = MarketAdapter(sim.url, policy=PLAIN)
    await market.start()
    yield market
    await market.close()


async def profile(adapter: MarketAdapter, uscc: str) -> dict[str, Any]:
    return (await adapter.invoke("enterprise-profile", EnterpriseQuery(uscc=uscc))).data


async def test_every_enterprise_matches_the_population(adapter: MarketAdapter) -> None:
    for enterprise in ENTERPRISES:
        data = await profile(adapter, enterprise.uscc)
        person = enterprise.legal_representative
        assert data == {
            "uscc": enterprise.uscc,
            "name": enterprise.name,
            "status": enterprise.status,
            "in_operation": enterprise.in_operation,
            "established_on": enterprise.established_on.isoformat(),
            "registered_capital": f"{enterprise.registered_capital:.2f}",  # 万元 on the wire, exact yuan here
            "industry_code": enterprise.industry,
            "region_code": enterprise.region,
            "legal_representative": {"name": person.name, "id_number": person.id_number, "phone": person.phone},
        }


async def test_unknown_enterprise_is_its_own_code(adapter: MarketAdapter) -> None:
    with pytest.raises(UpstreamSubjectUnknown) as caught:
        await profile(adapter, UNKNOWN_USCC)
    assert (caught.value.status, caught.value.upstream_status) == (502, "404/2004")
    assert "未查询到该企业" in caught.value.detail


async def test_bad_code_and_faults(adapter: MarketAdapter, sim: Simulator) -> None:
    with pytest.raises(UpstreamRejected) as rejected:
        await adapter.invoke("enterprise-profile", EnterpriseQuery.model_construct(uscc="91350100M000100Y4Z"))
    assert rejected.value.upstream_status == "1001"
    await sim.fault(mode="latency", latency_ms=2500, count=1)
    with pytest.raises(UpstreamTimeout):
        await profile(adapter, DEMO_USCC)
    await sim.fault(mode="malformed", count=1)
    with pytest.raises(UpstreamMalformed):
        await profile(adapter, DEMO_USCC)
    assert (await profile(adapter, DEMO_USCC))["uscc"] == DEMO_USCC


def _record(**changes: Any) -> dict[str, Any]:
    enterprise = next(e for e in ENTERPRISES if e.uscc == DEMO_USCC)
    return {**simulator.wire_record(enterprise), **changes}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_record(zczb="12.3456789"), "whole number of fen"),
        (_record(zczb=500), "not a decimal string"),
        (_record(zczbbz="美元"), "in 美元, not yuan"),
        (_record(clrq="2005-07-01"), "yyyyMMdd"),
        (_record(tyshxydm=UNKNOWN_USCC), "different enterprise"),
        (_record(hydm="3911"), "industry_code"),
        (_record(fddbr={"xm": "张三", "zjhm": "123", "lxdh": "13500000000"}), "id_number"),
        ({k: v for k, v in _record().items() if k != "qymc"}, "'qymc' is missing"),
    ],
)
async def test_contract_breaks_are_malformed(
    monkeypatch: pytest.MonkeyPatch, record: dict[str, Any], reason: str
) -> None:
    market = MarketAdapter("http://127.0.0.1:9", policy=PLAIN)

    async def answer(path: str, params: Any = None) -> JsonResponse:
        return JsonResponse(200, {"status": "0", "msg": "成功", "result": record})

    monkeypatch.setattr(market.http, "get_json", answer)
    with pytest.raises(UpstreamMalformed) as caught:
        await profile(market, DEMO_USCC)
    assert reason in caught.value.detail or reason in str(caught.value.__cause__)


async def test_long_status_form_and_capital_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    market = MarketAdapter("http://127.0.0.1:9", policy=PLAIN)
    record = _record(djzt="存续（在营、开业、在册）", zczb="123456789012.345678")

    async def answer(path: str, params: Any = None) -> JsonResponse:
        return JsonResponse(200, {"status": "0", "msg": "成功", "result": record})

    monkeypatch.setattr(market.http, "get_json", answer)
    data = await profile(market, DEMO_USCC)
    assert data["in_operation"] is True and data["status"] == "存续（在营、开业、在册）"
    assert Decimal(data["registered_capital"]) == Decimal("1234567890123456.78")


def test_personal_data_is_marked_sensitive() -> None:
    person = EnterpriseProfile.model_json_schema()["$defs"]["LegalRepresentative"]["properties"]
    assert (person["id_number"]["x-sensitive"], person["phone"]["x-sensitive"]) == ("id_number", "phone")
    assert "x-sensitive" not in person["name"]


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def gw(
    request: pytest.FixtureRequest, tmp_path: Path, credit_url: str, sim: Simulator
) -> AsyncIterator[RunningGateway]:
    async for running in upstream_gateway(request.param, tmp_path, {"credit": credit_url, "market": sim.url}):
        await grant_all(running, "market")
        yield running


async def test_market_through_the_gateway(gw: RunningGateway) -> None:
    async with gw.client() as client:
        listing = (await client.get("/v1/services")).json()["services"]
        market = next(s for s in listing if s["service"] == "market")
        schema = market["operations"][0]["output_schema"]
        assert schema["$defs"]["LegalRepresentative"]["properties"]["id_number"]["x-sensitive"] == "id_number"
        response = await client.post(
            "/v1/services/market/enterprise-profile", json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}}
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["uscc"] == DEMO_USCC and data["in_operation"] is True
        record = await last_record(gw)
        assert (record["service"], record["decision"]) == ("market", "allowed")
        assert set(record["fields"].split(",")) == set(EnterpriseProfile.model_fields)


async def test_redirects_are_not_followed() -> None:
    from aiohttp import web

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://127.0.0.1:9/elsewhere")

    app = web.Application()
    app.router.add_get("/api/market/v1/enterprises/{uscc}", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    market = MarketAdapter(f"http://127.0.0.1:{runner.addresses[0][1]}", policy=PLAIN)
    await market.start()
    try:
        with pytest.raises(UpstreamRejected) as caught:
            await profile(market, DEMO_USCC)
        assert caught.value.upstream_status == "302"
    finally:
        await market.close()
        await runner.cleanup()
