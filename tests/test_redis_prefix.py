"""MSJX_REDIS_PREFIX starts every Redis key: two gateways on one database and one Redis, with different prefixes,
see neither each other's nonces, nor quota counters, nor circuit breakers. Each process holds one Redis client."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from redis.asyncio import Redis

from adapters.resilience import BreakerConfig
from gateway.app import create_app
from tests.helpers.calls import assert_problem, send, signed
from tests.helpers.gateways import RunningGateway, make_gateway
from tests.helpers.quotas import admin_grant, call_for_purpose
from tests.helpers.services import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

BREAKER = BreakerConfig(
    failure_threshold=2, failure_ratio=0.5, window_ms=10_000, open_ms=60_000, probes=1, probe_lease_ms=1000
)


@asynccontextmanager
async def other_gateway(first: RunningGateway, prefix: str) -> AsyncIterator[RunningGateway]:
    """A second node of `first`'s deployment (same database, callers, grants, Redis) whose keys start with `prefix`."""
    settings = first.settings.model_copy(update={"node_id": "node-b", "redis_prefix": prefix})
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the second gateway did not start"
        await asyncio.sleep(0.02)
    try:
        yield dataclasses.replace(first, url=f"http://127.0.0.1:{port}", settings=settings, app=app)
    finally:
        server.should_exit = True
        await task


async def test_gateways_with_other_prefixes_share_a_redis_but_no_state(tmp_path: Path, credit_url: str) -> None:
    prefix_a, prefix_b = f"msjx-a-{secrets.token_hex(4)}", f"msjx-b-{secrets.token_hex(4)}"
    async with make_gateway(
        "postgres_redis", data_dir=tmp_path, upstream_urls={"credit": credit_url}, redis_prefix=prefix_a
    ) as a:
        # Before B starts: B rebuilds today's quota windows from the audit records when it starts.
        await admin_grant(a, daily_quota=1, purpose="PREFIX-1")
        async with other_gateway(a, prefix_b) as b:
            # One client per process, lent to every store that keeps state in Redis.
            for gateway in (a, b):
                runtime = gateway.runtime
                assert runtime.redis.prefix == gateway.settings.redis_prefix
                assert runtime.nonces.epoch is runtime.redis.epoch
                assert runtime.quotas.storage.bridge.storage.connection_pool is runtime.redis.client.connection_pool

            # Nonces: the same key and nonce, signed for each gateway, is new to each; A still remembers its own.
            nonce = f"prefix-nonce-{secrets.token_hex(4)}"
            assert (await send(signed(a, a.platform, nonce=nonce))).status_code == 200
            assert (await send(signed(b, b.platform, nonce=nonce))).status_code == 200
            assert_problem(await send(signed(a, a.platform, nonce=nonce)), 401, "nonce_replayed")

            # Quotas: one grant, a quota of one call a day, counted apart under each prefix.
            assert (await call_for_purpose(a, "PREFIX-1")).status_code == 200
            assert (await call_for_purpose(b, "PREFIX-1")).status_code == 200
            assert_problem(await call_for_purpose(a, "PREFIX-1"), 429, "quota_exhausted")
            assert_problem(await call_for_purpose(b, "PREFIX-1"), 429, "quota_exhausted")

            # Breakers: the same upstream of the same deployment (database), opened on A only.
            breakers_a, breakers_b = a.runtime.breakers, b.runtime.breakers
            for _ in range(2):
                assert (await breakers_a.acquire("prefix-test", BREAKER)).allowed
                await breakers_a.record("prefix-test", BREAKER, False, False)
            assert (await breakers_a.snapshot("prefix-test")).state == "open"
            assert (await breakers_b.snapshot("prefix-test")).state == "closed"
            assert (await breakers_b.acquire("prefix-test", BREAKER)).allowed

            # Every key either gateway wrote starts with its prefix; none of this caller's is anywhere else.
            redis = Redis.from_url(a.settings.redis_url)
            try:
                callers_keys = {key async for key in redis.scan_iter(match=f"*{a.platform.key_id}*")}
                for prefix in (prefix_a, prefix_b):
                    keys = {key async for key in redis.scan_iter(match=f"{prefix}:*")}
                    assert {key.decode().split(":")[1] for key in keys} == {"nonce", "limits", "breaker", "watch"}, keys
                    callers_keys -= keys
                    await redis.delete(*keys)
                assert not callers_keys
            finally:
                await redis.aclose()
