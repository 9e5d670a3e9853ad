"""/metrics counts exchanges by outcome and times them, so operators see refusals and upstream latency."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from simulators.enterprises import DEMO_USCC
from tests.helpers.gateways import PURPOSE, RunningGateway

INVOKE = "/v1/services/credit/dishonest-debtor"


async def scrape(gw: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_allowed_and_refused_exchanges_are_counted_and_timed(gateway: RunningGateway) -> None:
    before = await scrape(gateway)
    async with gateway.client() as client:
        for _ in range(3):
            assert (
                await client.post(INVOKE, json={"purpose": PURPOSE, "params": {"uscc": DEMO_USCC}})
            ).status_code == 200
        refused = await client.post(INVOKE, json={"purpose": "NOT-GRANTED", "params": {"uscc": DEMO_USCC}})
    assert refused.status_code == 403
    after = await scrape(gateway)
    allowed = dict(interface="rest", event="service.invoke", decision="allowed", code="")
    denied = dict(interface="rest", event="service.invoke", decision="refused", code="purpose_not_granted")
    assert value(after, "msjx_exchanges_total", **allowed) - value(before, "msjx_exchanges_total", **allowed) == 3
    assert value(after, "msjx_exchanges_total", **denied) - value(before, "msjx_exchanges_total", **denied) == 1
    timed = "msjx_upstream_duration_seconds_count"
    assert value(after, timed, service="credit") - value(before, timed, service="credit") == 3
    durations = "msjx_exchange_duration_seconds_count"
    assert value(after, durations, event="service.invoke") - value(before, durations, event="service.invoke") == 4
