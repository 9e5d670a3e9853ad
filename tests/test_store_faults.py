"""Restarts and outages of the stores behind the gateway, each on a server of the test's own:

- a gateway restart (in-process state) or a Redis restart (without persistence) neither lets a captured request be
  replayed nor gives a used-up daily quota back;
- Redis killed and PostgreSQL stopped: 503s with a code and Retry-After, one warning when the store goes and one
  when it is back, no traceback, and recovery without restarting the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY

from gateway.access.nonces import RedisNonceStore
from gateway.app import create_app
from gateway.settings import Settings, load_settings
from gateway.storage.redis import SharedRedis
from tests.helpers.calls import assert_problem, signed
from tests.helpers.faults import OwnPostgres, OwnRedis
from tests.helpers.gateways import RunningGateway, running_gateway
from tests.helpers.quotas import admin_grant, call_for_purpose
from tests.helpers.services import check_redis, create_test_database, drop_database
from tests.helpers.serving import served

pytestmark = pytest.mark.slow


@asynccontextmanager
async def serving(settings: Settings, port: int) -> AsyncIterator[str]:
    """The gateway again, on the port it had (so captured requests still name it), without seeding anything."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    async with served(config):
        yield f"http://127.0.0.1:{port}"


async def send(request: httpx.Request) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.send(request)


async def use_up_quota(gw: RunningGateway, purpose: str, quota: int) -> None:
    await admin_grant(gw, daily_quota=quota, purpose=purpose)
    assert [(await call_for_purpose(gw, purpose)).status_code for _ in range(quota)] == [200] * quota
    assert_problem(await call_for_purpose(gw, purpose), 429, "quota_exhausted")


async def next_second() -> None:
    # `created` has whole seconds: a store that starts in a later second is unambiguously after the signature.
    await asyncio.sleep(1.05 - time.time() % 1)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def store_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    yield caplog


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not noisy, [f"{r.name}: {r.getMessage()}" for r in noisy]


def dependency_messages(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "msjx.dependencies" and r.getMessage().startswith(name + " ")
    ]


async def test_a_gateway_restart_forgets_no_nonce_and_gives_no_quota_back(tmp_path: Path, credit_url: str) -> None:
    settings = load_settings(data_dir=tmp_path, upstream_urls={"credit": credit_url}, upstream_timeout=1.0)
    async with running_gateway(settings) as gw:
        await use_up_quota(gw, "RESTART-1", 3)
        captured = signed(gw, gw.platform)
        assert (await send(captured)).status_code == 200
        assert_problem(await send(captured), 401, "nonce_replayed")
        port = urlsplit(gw.url).port
        platform = gw.platform
    assert port is not None
    await next_second()
    async with serving(settings, port) as url:
        refused = assert_problem(await send(captured), 401, "signature_before_restart")  # same bytes, inside ±300 s
        assert "sign the request again" in refused["detail"]
        async with httpx.AsyncClient(base_url=url, auth=platform.auth(), timeout=30) as client:
            body = {"purpose": "RESTART-1", "params": {"uscc": "91350213MAG6BDRC7A"}}
            assert_problem(await client.post("/v1/services/credit/dishonest-debtor", json=body), 429, "quota_exhausted")
            fresh = await client.post("/v1/services/credit/dishonest-debtor", json={**body, "purpose": "XM-2025-001"})
            assert fresh.status_code == 200, fresh.text


async def test_a_gateway_restart_on_a_live_redis_counts_no_call_twice(tmp_path: Path, credit_url: str) -> None:
    # Redis kept its counters: the rebuild at start adds only what a Redis start forgot (nothing), on each node once.
    database_url = await create_test_database()
    settings = load_settings(
        data_dir=tmp_path,
        upstream_urls={"credit": credit_url},
        upstream_timeout=1.0,
        redis_url=await check_redis(),
        database_url=database_url,
    )
    try:
        async with running_gateway(settings) as gw:
            await admin_grant(gw, daily_quota=5, purpose="LIVE-1")
            assert [(await call_for_purpose(gw, "LIVE-1")).status_code for _ in range(3)] == [200] * 3
            port = urlsplit(gw.url).port
            platform = gw.platform
        assert port is not None
        async with serving(settings, port) as url:
            async with httpx.AsyncClient(base_url=url, auth=platform.auth(), timeout=30) as client:
                body = {"purpose": "LIVE-1", "params": {"uscc": "91350213MAG6BDRC7A"}}
                statuses = [
                    (await client.post("/v1/services/credit/dishonest-debtor", json=body)).status_code for _ in range(3)
                ]
        assert statuses == [200, 200, 429]
    finally:
        await drop_database(database_url)


async def test_redis_killed_and_back(tmp_path: Path, credit_url: str, store_logs: pytest.LogCaptureFixture) -> None:
    await check_redis()  # the shared one is not used, but its absence means this machine has no Redis at all
    redis = OwnRedis(tmp_path)
    redis.start()
    database_url = await create_test_database()
    settings = load_settings(
        data_dir=tmp_path / "data",
        upstream_urls={"credit": credit_url},
        upstream_timeout=1.0,
        redis_url=redis.url,
        database_url=database_url,
    )
    try:
        async with running_gateway(settings) as gw:
            await use_up_quota(gw, "REDIS-1", 3)
            captured = signed(gw, gw.platform)
            assert (await send(captured)).status_code == 200
            await next_second()
            failures_before = metric("msjx_dependency_failures_total", dependency="nonce_store")

            redis.kill()
            outage = [await call_for_purpose(gw, "XM-2025-001") for _ in range(20)]
            for response in outage:
                assert_problem(response, 503, "nonce_store_unavailable")
                assert int(response.headers["retry-after"]) >= 1
            assert metric("msjx_dependency_failures_total", dependency="nonce_store") - failures_before >= 20
            assert metric("msjx_dependency_up", dependency="nonce_store") == 0

            redis.start()  # the same port, and nothing in it: no nonce, no counter
            for _ in range(100):
                if (await call_for_purpose(gw, "XM-2025-001")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the gateway did not recover after Redis came back")
            assert metric("msjx_dependency_up", dependency="nonce_store") == 1
            assert_problem(await send(captured), 401, "signature_before_restart")  # its nonce died with the old Redis
            assert_problem(
                await call_for_purpose(gw, "REDIS-1"), 429, "quota_exhausted"
            )  # rebuilt from the audit records
            assert await gw.runtime.quotas.used_today(_grant_info(gw, "REDIS-1")) == 3
    finally:
        redis.stop()
        await drop_database(database_url)
    down = dependency_messages(store_logs, "nonce_store")
    assert len(down) == 2, down
    assert "unavailable" in down[0] and "is back after" in down[1]
    assert_no_tracebacks(store_logs)


def _grant_info(gw: RunningGateway, purpose: str) -> Any:
    grants = gw.runtime.directory._snapshot.grants[("platform", "credit", "dishonest-debtor")]
    return next(grant for grant in grants if grant.purpose == purpose)


async def test_postgresql_stopped_and_started(
    tmp_path: Path, credit_url: str, store_logs: pytest.LogCaptureFixture
) -> None:
    postgres = OwnPostgres()
    await asyncio.to_thread(postgres.init)
    await asyncio.to_thread(postgres.start)
    settings = load_settings(
        data_dir=tmp_path / "data",
        upstream_urls={"credit": credit_url},
        upstream_timeout=1.0,
        database_url=postgres.url,
        grant_cache_seconds=0.2,
    )
    try:
        async with running_gateway(settings) as gw:
            assert (await call_for_purpose(gw, "XM-2025-001")).status_code == 200
            await asyncio.to_thread(postgres.stop)
            outage = []
            for _ in range(20):
                outage.append(await call_for_purpose(gw, "XM-2025-001"))
                await asyncio.sleep(0.05)
            for response in outage:
                assert response.status_code == 503, response.text
                assert response.json()["code"] in {"audit_unavailable", "database_unavailable"}
                assert int(response.headers["retry-after"]) >= 1
            assert metric("msjx_dependency_up", dependency="database") == 0
            async with httpx.AsyncClient(base_url=gw.url) as anyone:  # a public route, outside any exchange
                assert_problem(await anyone.get("/v1/catalog"), 503, "database_unavailable")

            await asyncio.to_thread(postgres.start)
            for _ in range(100):
                if (await call_for_purpose(gw, "XM-2025-001")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the gateway did not recover after PostgreSQL came back")
            async with gw.client(gw.officer) as officer:
                verified = await officer.get("/v1/audit/verify")
            assert verified.status_code == 200 and verified.json()["ok"] is True, verified.text
    finally:
        await asyncio.to_thread(postgres.close)
    messages = dependency_messages(store_logs, "database")
    assert len(messages) == 2, messages
    assert "unavailable" in messages[0] and "is back after" in messages[1]
    assert_no_tracebacks(store_logs)


async def test_a_redis_that_refuses_info_still_serves(tmp_path: Path, store_logs: pytest.LogCaptureFixture) -> None:
    # Some managed Redis deployments rename or deny INFO: the gateway works, says once what it cannot notice.
    redis = OwnRedis(tmp_path, "--rename-command", "INFO", "")
    redis.start()
    shared = SharedRedis(redis.url, "msjx")
    store, epoch = RedisNonceStore(shared), shared.epoch
    try:
        created = int(time.time())
        assert [await store.claim("k", "n-00000001", created, 30) for _ in range(2)] == [True, False]
        assert epoch.blind and epoch.run_id is None
    finally:
        await shared.close()
        redis.stop()
    warnings = [r.getMessage() for r in store_logs.records if "refuses INFO" in r.getMessage()]
    assert len(warnings) == 1, warnings
