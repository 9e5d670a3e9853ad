"""Which audit records count as spent quota when the windows are rebuilt: answered calls and calls that reached
their upstream and failed there; not refusals, before the quota check or by it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx

from gateway.access.quota_rebuild import rebuild_quota_windows, spent_today
from gateway.access.quotas import LoopMemoryStorage, Quotas
from tests.helpers.gateways import RunningGateway
from tests.helpers.quotas import admin_grant, call_for_purpose, grant_info


async def test_spent_calls_are_read_from_the_audit(
    gateway: RunningGateway, credit_url: str, clear_faults: None
) -> None:
    grant = await admin_grant(gateway, daily_quota=4, purpose="SPENT-1")
    assert (await call_for_purpose(gateway, "SPENT-1")).status_code == 200
    assert (await call_for_purpose(gateway, "SPENT-1")).status_code == 200
    async with httpx.AsyncClient() as client:
        await client.post(f"{credit_url}/_sim/faults", json={"mode": "status", "status": 500, "count": 5})
    failed = await call_for_purpose(gateway, "SPENT-1")  # counted, then failed upstream (with its retries)
    assert failed.status_code >= 500, failed.text
    async with httpx.AsyncClient() as client:
        await client.delete(f"{credit_url}/_sim/faults")
    async with gateway.client() as platform:  # refused before the quota check: spends nothing
        bad = await platform.post("/v1/services/credit/dishonest-debtor", json={"purpose": "SPENT-1", "params": {}})
    assert bad.status_code == 422
    assert (await call_for_purpose(gateway, "SPENT-1")).status_code == 200  # the fourth and last
    assert (await call_for_purpose(gateway, "SPENT-1")).status_code == 429  # refused by the check: spends nothing
    spent = await spent_today(gateway.runtime.engine, datetime.now(UTC), before=time.time() + 1)
    assert spent[grant["grant_id"]] == (4, 4)
    assert await spent_today(gateway.runtime.engine, datetime.now(UTC), before=time.time() - 3600) == {}


async def test_a_fresh_counter_store_gets_the_audited_calls_back(gateway: RunningGateway) -> None:
    grant = await admin_grant(gateway, daily_quota=3, purpose="SPENT-2")
    assert [(await call_for_purpose(gateway, "SPENT-2")).status_code for _ in range(2)] == [200, 200]
    fresh = Quotas(LoopMemoryStorage(wrap_exceptions=True), "memory")  # as after a restart: nothing counted
    fresh.started = time.time() + 1
    assert await rebuild_quota_windows(gateway.runtime.engine, fresh) == 1
    info = grant_info(daily_quota=3)
    info = type(info)(**{**info.__dict__, "grant_id": grant["grant_id"]})
    assert await fresh.used_today(info) == 2
