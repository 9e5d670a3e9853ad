"""Resilience over real sockets: retries of safe calls only (counted), the circuit breaker opening, probing and
closing (in memory and shared through Redis), the concurrency bound, and every fault mapped to problem+json and
recorded in the audit log."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from adapters.errors import (
    UpstreamBusy,
    UpstreamCircuitOpen,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamRejected,
    UpstreamTimeout,
)
from adapters.golden_tax import GoldenTaxAdapter
from adapters.resilience import BreakerConfig, BreakerStore, Guarded, MemoryBreakerStore, ResiliencePolicy
from gateway.upstreams.breakers import RedisBreakerStore
from gateway.upstreams.registry import prepare
from schemas.tax import TaxpayerYearQuery
from simulators import golden_tax as simulator
from simulators.enterprises import DEMO_USCC
from tests.helpers.calls import last_record
from tests.helpers.district_upstreams import EXAMPLES, serving, soap_app
from tests.helpers.gateways import RunningGateway
from tests.helpers.services import check_redis
from tests.helpers.upstreams import PURPOSE, Simulator, grant_all, started_simulator, upstream_gateway

CONFIG = BreakerConfig(
    failure_threshold=3, failure_ratio=0.5, window_ms=10_000, open_ms=300, probes=2, probe_lease_ms=400
)
RATING = TaxpayerYearQuery(uscc=DEMO_USCC, year=2025)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BreakerStore]:
    if request.param == "memory":
        yield MemoryBreakerStore()
        return
    url = await check_redis()
    redis = Redis.from_url(url)
    redis_store = RedisBreakerStore(redis, f"msjx-test:breaker:{secrets.token_hex(6)}")
    yield redis_store
    await redis_store.reset("up")
    await redis.aclose()


async def _fail(store: BreakerStore, times: int) -> str:
    state = ""
    for _ in range(times):
        assert (await store.acquire("up", CONFIG)).allowed
        state = await store.record("up", CONFIG, False, False)
    return state


async def test_breaker_opens_probes_and_closes(store: BreakerStore) -> None:
    assert await store.acquire("up", CONFIG) == (await store.acquire("up", CONFIG))  # closed: allowed, not a probe
    assert await _fail(store, 2) == "closed"
    assert await _fail(store, 1) == "open"
    denied = await store.acquire("up", CONFIG)
    assert not denied.allowed and 0 < denied.retry_after_ms <= 300
    await asyncio.sleep(0.35)
    probe = await store.acquire("up", CONFIG)
    assert probe.allowed and probe.probe
    second = await store.acquire("up", CONFIG)
    assert not second.allowed  # one probe at a time
    assert await store.record("up", CONFIG, True, True) == "half_open"
    assert (await store.acquire("up", CONFIG)).probe
    assert await store.record("up", CONFIG, True, True) == "closed"  # `probes` good probes in a row
    assert (await store.snapshot("up")).state == "closed"
    permit = await store.acquire("up", CONFIG)
    assert permit.allowed and not permit.probe


async def test_failed_probe_reopens_and_lost_probe_expires(store: BreakerStore) -> None:
    await _fail(store, 3)
    await asyncio.sleep(0.35)
    assert (await store.acquire("up", CONFIG)).probe
    assert await store.record("up", CONFIG, False, True) == "open"
    assert not (await store.acquire("up", CONFIG)).allowed
    await asyncio.sleep(0.35)
    assert (await store.acquire("up", CONFIG)).probe  # this probe never reports (its node died) ...
    assert not (await store.acquire("up", CONFIG)).allowed
    await asyncio.sleep(0.45)
    assert (await store.acquire("up", CONFIG)).probe  # ... so its lease runs out and another is let through


async def test_failures_must_also_be_a_share_of_calls(store: BreakerStore) -> None:
    for _ in range(10):
        await store.record("up", CONFIG, True, False)
    assert await _fail(store, 4) == "closed"  # 4 of 14 failed: under the 50 % ratio
    assert await _fail(store, 6) == "open"  # 10 of 20
    assert (await store.snapshot("up")).state == "open"


async def test_redis_breaker_is_shared_by_nodes() -> None:
    url = await check_redis()
    prefix = f"msjx-test:breaker:{secrets.token_hex(6)}"
    client_a, client_b = Redis.from_url(url), Redis.from_url(url)
    node_a, node_b = RedisBreakerStore(client_a, prefix), RedisBreakerStore(client_b, prefix)
    try:
        await _fail(node_a, 3)
        assert not (await node_b.acquire("up", CONFIG)).allowed
        assert (await node_b.snapshot("up")).state == "open"
    finally:
        await node_a.reset("up")
        await client_a.aclose()
        await client_b.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_node_trusts_a_closed_breaker_for_closed_ttl_only() -> None:
    url = await check_redis()
    prefix = f"msjx-test:breaker:{secrets.token_hex(6)}"
    clock = Clock()
    client_a, client_b = Redis.from_url(url), Redis.from_url(url)
    node_a = RedisBreakerStore(client_a, prefix)
    node_b = RedisBreakerStore(client_b, prefix, closed_ttl=0.2, clock=clock)
    try:
        assert (await node_b.acquire("up", CONFIG)).allowed  # asked Redis: closed
        await _fail(node_a, 3)
        clock.now += 0.19
        assert (await node_b.acquire("up", CONFIG)).allowed, "closed as last seen, without a round trip"
        clock.now += 0.02
        assert not (await node_b.acquire("up", CONFIG)).allowed, "after closed_ttl it asks again and obeys"
    finally:
        await node_a.reset("up")
        await client_a.aclose()
        await client_b.aclose()


async def test_successes_are_counted_locally_and_sent_with_the_next_failure() -> None:
    url = await check_redis()
    prefix = f"msjx-test:breaker:{secrets.token_hex(6)}"
    clock = Clock()
    redis = Redis.from_url(url)
    node = RedisBreakerStore(redis, prefix, closed_ttl=0.2, clock=clock)
    try:
        assert (await node.acquire("up", CONFIG)).allowed
        for _ in range(10):
            assert await node.record("up", CONFIG, True, False) == "closed"
        assert int(await redis.hget(f"{prefix}:up:w", "calls") or 0) == 1, "one report, nine successes held back"
        assert await _fail(node, 4) == "closed"  # 4 of 14 failed: the held-back successes count
        assert (await node.snapshot("up")).calls == 14
        for _ in range(3):
            await node.record("up", CONFIG, True, False)
        clock.now += 0.25  # a success after closed_ttl reports the ones held back
        await node.record("up", CONFIG, True, False)
        assert int(await redis.hget(f"{prefix}:up:w", "calls") or 0) == 18
        assert await _fail(node, 6) == "closed"  # 10 of 24
        assert await _fail(node, 3) == "closed"  # 13 of 27: still under half
        assert await _fail(node, 1) == "open"  # 14 of 28
    finally:
        await node.reset("up")
        await redis.aclose()


def test_policy_from_settings_is_checked() -> None:
    policy = ResiliencePolicy.from_mapping({"max_attempts": 2, "total_timeout": 1.5, "read_timeout": None})
    assert (policy.max_attempts, policy.total_timeout, policy.read_timeout) == (2, 1.5, None)
    for bad, message in (
        ({"max_attempts": 1.5}, "an integer"),
        ({"total_timeout": "3"}, "a number"),
        ({"max_attempts": 0}, "at least 1"),
        ({"failure_ratio": 2}, "(0, 1]"),
        ({"retries": 3}, "unknown policy keys"),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            ResiliencePolicy.from_mapping(bad)


# --- the guard around a real upstream -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[Simulator]:
    async for running in started_simulator(simulator):
        yield running


@pytest.fixture
async def faults(sim: Simulator) -> AsyncIterator[Simulator]:
    yield sim
    await sim.clear()


async def tax_adapter(sim: Simulator, **policy: Any) -> Guarded:
    settings = {"total_timeout": 0.3, "backoff_initial": 0.01, "backoff_max": 0.05, **policy}
    adapter = Guarded(GoldenTaxAdapter(sim.url, policy=ResiliencePolicy.from_mapping(settings)))
    await adapter.start()
    return adapter


async def test_safe_call_is_retried_until_it_succeeds(faults: Simulator) -> None:
    adapter = await tax_adapter(faults, max_attempts=3)
    try:
        await faults.fault(mode="status", status=503, count=2)
        before = await faults.served()
        result = await adapter.invoke("tax-credit-rating", RATING)
        assert result.data["rating"] == "A" and result.attempts == 3
        assert await faults.served() - before == 3
    finally:
        await adapter.close()


@pytest.mark.parametrize(
    ("plan", "error", "attempts"),
    [
        ({"mode": "status", "status": 502}, UpstreamRejected, 3),  # transient: every attempt used
        ({"mode": "latency", "latency_ms": 500}, UpstreamTimeout, 3),
        ({"mode": "soap_fault"}, UpstreamFault, 3),  # a soap:Server fault is the upstream failing
        ({"mode": "malformed"}, UpstreamMalformed, 1),  # the same question gets the same broken answer
    ],
)
async def test_attempts_per_kind_of_failure(
    faults: Simulator, plan: dict[str, Any], error: type, attempts: int
) -> None:
    adapter = await tax_adapter(faults, max_attempts=3, failure_threshold=1000)
    try:
        await faults.fault(**plan)
        before = await faults.served()
        with pytest.raises(error) as caught:
            await adapter.invoke("tax-credit-rating", RATING)
        assert caught.value.attempts == attempts
        assert await faults.served() - before == attempts
    finally:
        await adapter.close()


async def test_business_faults_are_not_retried(faults: Simulator) -> None:
    adapter = await tax_adapter(faults, max_attempts=3)
    try:
        before = await faults.served()
        with pytest.raises(UpstreamFault) as caught:
            await adapter.invoke("annual-tax-paid", TaxpayerYearQuery(uscc=DEMO_USCC, year=2030))
        assert caught.value.attempts == 1 and await faults.served() - before == 1
        assert (await adapter.guard.state()).failures == 0  # an answer, not a failure of the upstream
    finally:
        await adapter.close()


async def test_retry_budget_bounds_the_attempts(faults: Simulator) -> None:
    adapter = await tax_adapter(faults, max_attempts=10, total_timeout=0.1, retry_budget=0.25, failure_threshold=1000)
    try:
        await faults.fault(mode="latency", latency_ms=300)
        with pytest.raises(UpstreamTimeout) as caught:
            await adapter.invoke("tax-credit-rating", RATING)
        # Ten attempts were allowed; the 0.25 s budget over 0.1 s attempts stops them after two or three.
        assert 2 <= caught.value.attempts <= 3
    finally:
        await adapter.close()


async def test_retry_budget_counts_from_the_first_attempt(faults: Simulator) -> None:
    # The first attempt runs before tenacity starts its clock: its time must still be spent from the budget.
    adapter = await tax_adapter(faults, max_attempts=10, total_timeout=0.3, retry_budget=0.2, failure_threshold=1000)
    try:
        await faults.fault(mode="latency", latency_ms=500)
        before = await faults.served()
        with pytest.raises(UpstreamTimeout) as caught:
            await adapter.invoke("tax-credit-rating", RATING)
        assert caught.value.attempts == 1
        await asyncio.sleep(0.3)  # the simulator counts a request when it has answered it
        assert await faults.served() - before == 1
    finally:
        await adapter.close()


async def test_unsafe_operation_is_never_retried() -> None:
    app = soap_app()
    async with serving(app) as url:
        adapter = Guarded(
            prepare(
                "district", "wsdl", source=str(EXAMPLES / "district-wrapped.wsdl"), endpoint=url, allow_files=True
            ).adapter
        )
        await adapter.start()
        async with aiohttp.ClientSession() as session:
            control = Simulator(url, session)
            await control.fault(mode="status", status=503)
            operation = adapter.operations["Echo"]
            assert not operation.safe
            params = operation.input_model.model_validate(
                {
                    "record": {
                        "text": "t",
                        "amount": "1",
                        "count": 1,
                        "flag": True,
                        "day": "2025-01-01",
                        "level": "gold",
                        "address": {"street": "s", "region": "r"},
                        "byName": "n",
                        "version": 1,
                    }
                }
            )
            before = await control.served()
            with pytest.raises(UpstreamRejected) as caught:
                await adapter.invoke("Echo", params)
            assert caught.value.attempts == 1 and await control.served() - before == 1
            await control.clear()
        await adapter.close()


async def test_breaker_opens_then_recovers_through_probes(faults: Simulator) -> None:
    adapter = await tax_adapter(faults, max_attempts=1, failure_threshold=3, open_seconds=0.4, probes=2)
    try:
        await faults.fault(mode="status", status=500)
        for _ in range(3):
            with pytest.raises(UpstreamRejected):
                await adapter.invoke("tax-credit-rating", RATING)
        before = await faults.served()
        with pytest.raises(UpstreamCircuitOpen) as caught:
            await adapter.invoke("tax-credit-rating", RATING)
        assert await faults.served() == before  # nothing was sent
        assert (caught.value.status, caught.value.code, caught.value.headers) == (
            503,
            "upstream_circuit_open",
            {"Retry-After": "1"},
        )
        await faults.clear()
        await asyncio.sleep(0.45)
        assert (await adapter.invoke("tax-credit-rating", RATING)).data["rating"] == "A"  # probe 1
        assert (await adapter.guard.state()).state == "half_open"
        assert (await adapter.invoke("tax-credit-rating", RATING)).data["rating"] == "A"  # probe 2
        assert (await adapter.guard.state()).state == "closed"
    finally:
        await adapter.close()


async def test_concurrency_is_bounded(faults: Simulator) -> None:
    adapter = await tax_adapter(faults, max_concurrency=2, queue_timeout=0.1, total_timeout=2, max_attempts=1)
    try:
        await faults.fault(mode="latency", latency_ms=400)
        results = await asyncio.gather(
            *(adapter.invoke("tax-credit-rating", RATING) for _ in range(5)), return_exceptions=True
        )
        busy = [r for r in results if isinstance(r, UpstreamBusy)]
        assert len(busy) == 3 and len(results) - len(busy) == 2
        assert all(b.status == 503 and b.headers == {"Retry-After": "1"} for b in busy)
        assert adapter.guard.in_flight == 0
    finally:
        await adapter.close()


# --- every fault through the gateway, audited ---------------------------------------------------------------------

POLICY = {"golden-tax": {"max_attempts": 2, "backoff_initial": 0.01, "failure_threshold": 4, "open_seconds": 30}}


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def gw(
    request: pytest.FixtureRequest, tmp_path: Path, credit_url: str, sim: Simulator
) -> AsyncIterator[RunningGateway]:
    async for running in upstream_gateway(
        request.param, tmp_path, {"credit": credit_url, "golden-tax": sim.url}, POLICY
    ):
        await grant_all(running, "golden-tax")
        yield running


INVOKE = "/v1/services/golden-tax/tax-credit-rating"
BODY = {"purpose": PURPOSE, "params": {"uscc": DEMO_USCC, "year": 2025}}


@pytest.mark.parametrize(
    ("plan", "status", "code", "upstream_status"),
    [
        ({"mode": "soap_fault"}, 502, "upstream_fault", "Server/GT3-9999;attempts=2"),
        ({"mode": "latency", "latency_ms": 800}, 504, "upstream_timeout", "timeout;attempts=2"),
        ({"mode": "malformed"}, 502, "upstream_malformed", "200"),
        ({"mode": "drop"}, 502, "upstream_unavailable", "none;attempts=2"),
        ({"mode": "status", "status": 503}, 502, "upstream_error", "503;attempts=2"),
    ],
)
async def test_fault_mapping_is_audited(
    gw: RunningGateway, faults: Simulator, plan: dict[str, Any], status: int, code: str, upstream_status: str
) -> None:
    await faults.fault(**plan)
    async with gw.client() as client:
        response = await client.post(INVOKE, json=BODY)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["code"] == code
    if code == "upstream_fault":
        assert "Server/GT3-9999" in problem["detail"] and "系统繁忙，请稍后重试" in problem["detail"]
    record = await last_record(gw)
    assert (record["decision"], record["reason_code"], record["status_code"], record["upstream_status"]) == (
        "failed",
        code,
        status,
        upstream_status,
    )


async def test_open_breaker_answers_503_with_retry_after(gw: RunningGateway, faults: Simulator) -> None:
    await faults.fault(mode="status", status=500)
    async with gw.client() as client:
        for _ in range(2):  # 2 calls x 2 attempts = 4 failures: the threshold
            assert (await client.post(INVOKE, json=BODY)).status_code == 502
        before = await faults.served()
        response = await client.post(INVOKE, json=BODY)
    assert await faults.served() == before
    assert response.status_code == 503 and response.json()["code"] == "upstream_circuit_open"
    assert 1 <= int(response.headers["retry-after"]) <= 30
    record = await last_record(gw)
    assert (record["reason_code"], record["upstream_status"], record["status_code"]) == (
        "upstream_circuit_open",
        "circuit_open",
        503,
    )
    breakers = gw.runtime.breakers
    assert breakers.kind == ("redis" if gw.settings.redis_url else "memory")
    assert (await breakers.snapshot("golden-tax")).state == "open"
    await breakers.reset("golden-tax")
