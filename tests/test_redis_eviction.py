"""A Redis that may drop the gateway's keys without restarting, or that the gateway cannot use, on a server of the
test's own:

- one with a memory limit and an evicting policy is refused at start, in one line, exit 2: a dropped nonce let a
  captured signed request be replayed (gateway/storage/redis_eviction.py);
- one in cluster mode is refused at start too: the gateway's client does not route commands by hash slot;
- one that starts dropping keys while the gateway serves (the policy changed live, or a FLUSHALL) is noticed within
  a look of the watch: the captured request is then refused as after a Redis restart, and the log says why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from gateway import runtime as runtime_module
from gateway.settings import load_settings
from gateway.storage.reachability import StorageUnusable, check_redis
from tests.helpers.calls import assert_problem, signed
from tests.helpers.faults import OwnRedis
from tests.helpers.gateways import RunningGateway, running_gateway
from tests.helpers.processes import CLI
from tests.helpers.quotas import admin_grant, call_for_purpose
from tests.helpers.services import create_test_database, drop_database, free_port
from tests.test_store_faults import _grant_info

pytestmark = pytest.mark.slow
EVICTING = ("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru")


@pytest.fixture
def own_redis(tmp_path: Path) -> OwnRedis:
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis  # type: ignore[misc]
    redis.stop()


async def test_an_evicting_redis_is_refused_at_start(tmp_path: Path) -> None:
    redis = OwnRedis(tmp_path, *EVICTING)
    redis.start()
    try:
        with pytest.raises(StorageUnusable) as refused:
            await check_redis(load_settings(data_dir=tmp_path, redis_url=redis.url))
        message = str(refused.value)
        assert message.startswith(f"MSJX_REDIS_URL: Redis at 127.0.0.1:{redis.port} evicts keys when full")
        assert "maxmemory 67108864 bytes, maxmemory-policy volatile-lru" in message
        assert "set maxmemory-policy noeviction" in message

        env = {**os.environ, "MSJX_DATA_DIR": str(tmp_path / "var"), "MSJX_REDIS_URL": redis.url}
        env.pop("MSJX_DATABASE_URL", None)
        served = subprocess.run([CLI, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
        assert served.returncode == 2
        assert served.stderr.strip().splitlines() == [f"error: {message}"]
    finally:
        redis.stop()


async def test_a_cluster_mode_redis_is_refused_at_start(tmp_path: Path) -> None:
    # The cluster bus listens on the port + 10000 unless told: a free port above 55535 left it none, and no server.
    redis = OwnRedis(tmp_path, "--cluster-enabled", "yes", "--cluster-port", str(free_port()))
    redis.start()
    try:
        with pytest.raises(StorageUnusable) as refused:
            await check_redis(load_settings(data_dir=tmp_path, redis_url=redis.url))
    finally:
        redis.stop()
    assert str(refused.value) == (
        f"MSJX_REDIS_URL: Redis at 127.0.0.1:{redis.port} runs in cluster mode, and the gateway's client does not"
        " route commands by hash slot; use a standalone Redis"
    )


@pytest.mark.parametrize(
    "options",
    [
        (),  # no memory limit: nothing is ever evicted, whatever the policy says
        ("--maxmemory-policy", "allkeys-lru"),
        ("--maxmemory", "64mb", "--maxmemory-policy", "noeviction"),  # full: writes refused, 503s, nothing dropped
    ],
)
async def test_a_redis_that_never_drops_keys_is_taken(tmp_path: Path, options: tuple[str, ...]) -> None:
    redis = OwnRedis(tmp_path, *options)
    redis.start()
    try:
        await check_redis(load_settings(data_dir=tmp_path, redis_url=redis.url))
    finally:
        redis.stop()


async def test_a_full_redis_that_keeps_its_keys_is_taken_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Full with noeviction: writes are refused until there is room, nothing is dropped; the start's probe write is
    # refused too, which is not a lack of rights.
    redis = OwnRedis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    redis.start()
    client = Redis.from_url(redis.url)
    try:
        with pytest.raises(OutOfMemoryError):
            for number in range(1000):
                await client.set(f"other-app:{number}", b"y" * 10_000)
        with caplog.at_level(logging.WARNING, "msjx.storage"):
            await check_redis(load_settings(data_dir=tmp_path, redis_url=redis.url))
    finally:
        await client.aclose()
        redis.stop()
    assert caplog.messages == [
        f"Redis at 127.0.0.1:{redis.port} is full (maxmemory reached): calls are answered 503 until there is room"
    ]


@asynccontextmanager
async def gateway_on(redis_url: str, tmp_path: Path, credit_url: str) -> AsyncIterator[RunningGateway]:
    database_url = await create_test_database()
    settings = load_settings(
        data_dir=tmp_path, upstream_urls={"credit": credit_url}, redis_url=redis_url, database_url=database_url
    )
    try:
        async with running_gateway(settings) as gateway:
            yield gateway
    finally:
        await drop_database(database_url)


async def send(request: httpx.Request) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.send(request)


async def refused_within(request: httpx.Request, seconds: float) -> dict[str, object]:
    """The replay, until the watch has looked (a few of its turns at most)."""
    for _ in range(int(seconds / 0.1)):  # bounded in time
        answer = await send(request)
        if answer.status_code == 401 and answer.json()["code"] == "signature_before_restart":
            return answer.json()
        await asyncio.sleep(0.1)
    return assert_problem(answer, 401, "signature_before_restart")


@pytest.fixture
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(runtime_module, "WATCH_SECONDS", 0.3)
    return 0.3


async def test_keys_evicted_while_serving_refuse_the_requests_signed_before(
    own_redis: OwnRedis, tmp_path: Path, credit_url: str, quick_watch: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "msjx.state")
    async with gateway_on(own_redis.url, tmp_path, credit_url) as gateway:
        captured = signed(gateway, gateway.platform)
        assert (await send(captured)).status_code == 200
        assert_problem(await send(captured), 401, "nonce_replayed")
        # Eviction keeps the current second usable (it drops the least recently used first): the captured request's
        # second is over before the server starts dropping.
        await next_second()
        client = Redis.from_url(own_redis.url)
        try:
            # The operator sets a limit and an evicting policy on the live server, and it fills up.
            await client.config_set("maxmemory-policy", "volatile-lru")
            await client.config_set("maxmemory", str(int((await client.info("memory"))["used_memory"]) + 200_000))
            for number in range(200):
                try:
                    await client.set(f"other-app:{number}", b"y" * 10_000)
                except OutOfMemoryError:  # full once the gateway's keys are gone: what the test wants
                    break
            assert int((await client.info("stats"))["evicted_keys"]) > 0
        finally:
            await client.aclose()
        refused = await refused_within(captured, 20 * quick_watch)
        assert "sign the request again" in str(refused["detail"])
        await next_second()
        async with gateway.client() as fresh:  # newly signed calls go on, or wait for room (503), never 401
            answer = await fresh.post("/v1/services/credit/dishonest-debtor", json=_body())
            assert answer.status_code in (200, 503), answer.text
    messages = caplog.messages
    assert any("Redis evicts keys when full (maxmemory" in m and "volatile-lru" in m for m in messages), messages
    assert any("Redis dropped state without restarting (it evicted" in m for m in messages), messages


async def test_a_flush_while_serving_refuses_the_requests_signed_before(
    own_redis: OwnRedis, tmp_path: Path, credit_url: str, quick_watch: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "msjx.state")
    async with gateway_on(own_redis.url, tmp_path, credit_url) as gateway:
        await asyncio.sleep(2 * quick_watch)  # the watch's first look has set its key
        captured = signed(gateway, gateway.platform)
        assert (await send(captured)).status_code == 200
        client = Redis.from_url(own_redis.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        await refused_within(captured, 20 * quick_watch)
        await next_second()  # a flush refuses the rest of its second once: "sign the request again"
        async with gateway.client() as fresh:
            answer = await fresh.post("/v1/services/credit/dishonest-debtor", json=_body())
            assert answer.status_code == 200, answer.text
    assert any("Redis dropped state without restarting (its keys were flushed)" in m for m in caplog.messages)


async def test_a_flush_while_serving_gives_no_quota_back(
    own_redis: OwnRedis, tmp_path: Path, credit_url: str, quick_watch: float
) -> None:
    async with gateway_on(own_redis.url, tmp_path, credit_url) as gateway:
        await asyncio.sleep(2 * quick_watch)  # the watch's first look has set its key
        await admin_grant(gateway, daily_quota=3, purpose="FLUSH-1")
        assert [(await call_for_purpose(gateway, "FLUSH-1")).status_code for _ in range(2)] == [200, 200]
        captured = signed(gateway, gateway.platform)
        client = Redis.from_url(own_redis.url)
        try:
            await client.flushall()  # the day's counters go with the nonces
        finally:
            await client.aclose()
        await refused_within(captured, 20 * quick_watch)  # the watch has seen the flush
        await next_second()
        # Two of three were spent before the flush, as the audit records say: one is left, not three.
        statuses = [(await call_for_purpose(gateway, "FLUSH-1")).status_code for _ in range(3)]
        assert statuses == [200, 429, 429]
        assert await gateway.runtime.quotas.used_today(_grant_info(gateway, "FLUSH-1")) == 3


async def next_second() -> None:
    # `created` has whole seconds: what happens in a later second is unambiguously after a signature.
    await asyncio.sleep(1.05 - time.time() % 1)


def _body() -> dict[str, object]:
    from tests.helpers.gateways import PURPOSE

    return {"purpose": PURPOSE, "params": {"uscc": "91411303MA1UKMT93R"}}
