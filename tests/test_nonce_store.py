"""The Redis nonce store sends the claims of one loop turn in one pipeline; each nonce is still granted once.
The pipeline batcher behind it (also used for quota counters) keeps each command's result."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.access.nonces import MemoryNonceStore, RedisNonceStore
from gateway.storage.redis import PipelineBatcher, RedisEpoch, SharedRedis, connect_redis
from tests.helpers.clock import ManualClock
from tests.helpers.services import check_redis, free_port


def now() -> int:
    return int(time.time())


@pytest.fixture
async def store() -> AsyncIterator[RedisNonceStore]:
    redis = SharedRedis(await check_redis(), "msjx")
    yield RedisNonceStore(redis)
    await redis.close()


async def test_same_nonce_claimed_concurrently_is_granted_once(store: RedisNonceStore) -> None:
    created = now()
    key_id = f"test.{secrets.token_hex(6)}"
    results = await asyncio.gather(*(store.claim(key_id, "nonce-0001", created, 30) for _ in range(20)))
    assert sorted(results) == [False] * 19 + [True]
    assert await store.claim(key_id, "nonce-0001", created, 30) is False


async def test_distinct_nonces_in_one_pipeline_are_all_granted(store: RedisNonceStore) -> None:
    created = now()
    key_id = f"test.{secrets.token_hex(6)}"
    results = await asyncio.gather(*(store.claim(key_id, f"nonce-{i:04d}", created, 30) for i in range(200)))
    assert results == [True] * 200
    again = await asyncio.gather(
        store.claim(key_id, "nonce-0007", created, 30), store.claim(key_id, "nonce-9999", created, 30)
    )
    assert again == [False, True]


async def test_same_nonce_under_another_key_is_another_claim(store: RedisNonceStore) -> None:
    created = now()
    first, second = f"test.{secrets.token_hex(6)}", f"test.{secrets.token_hex(6)}"
    assert await asyncio.gather(
        store.claim(first, "shared-nonce", created, 30), store.claim(second, "shared-nonce", created, 30)
    ) == [
        True,
        True,
    ]


async def test_redis_store_keeps_a_nonce_until_its_signature_expires_by_the_clock_it_is_given() -> None:
    # The TTL is the signature's remaining validity, `created + max_skew` less the gateway's now: here 10 s.
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    redis = SharedRedis(await check_redis(), "msjx")
    store = RedisNonceStore(redis, clock)
    key_id = f"test.{secrets.token_hex(6)}"
    try:
        assert await store.claim(key_id, "nonce-ttl", int(clock.time()) - 290, 300)
        ttl = await redis.client.ttl(f"{redis.key('nonce')}:{key_id}:nonce-ttl")
    finally:
        await redis.close()
    assert ttl in (10, 11), ttl  # 11 as set; 10 once a second has begun on the server


async def test_unreachable_redis_fails_every_waiter() -> None:
    created = now()
    redis = SharedRedis("redis://127.0.0.1:1/0", "msjx")
    store = RedisNonceStore(redis)
    try:
        outcomes = await asyncio.gather(
            *(store.claim("k", f"nonce-{i:04d}", created, 30) for i in range(5)), return_exceptions=True
        )
    finally:
        await redis.close()
    assert all(isinstance(outcome, Exception) for outcome in outcomes), outcomes


async def test_memory_store_grants_once() -> None:
    created = now()
    store = MemoryNonceStore()
    assert [await store.claim("k", "n-000001", created, 30) for _ in range(2)] == [True, False]


async def test_a_burst_beyond_the_pool_waits_instead_of_failing() -> None:
    # redis-py's default pool raises MaxConnectionsError past its limit; every shared-state client must queue instead.
    client = connect_redis(await check_redis(), max_connections=4)
    prefix = f"msjx-test:burst:{secrets.token_hex(6)}"
    try:
        results = await asyncio.gather(*(client.set(f"{prefix}:{i}", b"1", nx=True, ex=5) for i in range(200)))
        assert results == [True] * 200
    finally:
        await client.aclose()


async def test_commands_of_one_loop_turn_share_one_round_trip_and_replies_stay_in_order() -> None:
    url = await check_redis()
    redis = connect_redis(url)
    pool = redis.connection_pool
    batcher = PipelineBatcher(pool)
    checkouts = 0
    real_get_connection = pool.get_connection

    async def counted() -> Any:
        nonlocal checkouts
        checkouts += 1
        return await real_get_connection()

    pool.get_connection = counted  # type: ignore[method-assign]
    key = f"msjx-test:batcher:{secrets.token_hex(6)}"
    try:
        replies = await asyncio.gather(*(batcher.run("INCR", key) for _ in range(50)))
        assert replies == list(range(1, 51)), "each command's own reply, in the order they were issued"
        assert checkouts == 1, "one connection, one write, for the commands of one loop turn"
        script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
        assert await batcher.run("EVAL", script, 1, key, 5) == 55
        assert checkouts == 2
        assert await batcher.run("SET", key + ":s", b"1", "NX", "EX", 5) == b"OK"
        assert await batcher.run("SET", key + ":s", b"1", "NX", "EX", 5) is None
    finally:
        await redis.delete(key, key + ":s")
        await batcher.close()
        await redis.aclose()


async def test_an_error_reply_fails_its_own_command_only() -> None:
    redis = connect_redis(await check_redis())
    batcher = PipelineBatcher(redis.connection_pool)
    key = f"msjx-test:batcher:{secrets.token_hex(6)}"
    try:
        await redis.set(key + ":text", "not a number")
        outcomes = await asyncio.gather(
            batcher.run("INCR", key),
            batcher.run("INCR", key + ":text"),
            batcher.run("INCR", key),
            return_exceptions=True,
        )
        assert outcomes[0] == 1 and outcomes[2] == 2, outcomes
        assert isinstance(outcomes[1], ResponseError) and "not an integer" in str(outcomes[1])
        assert await batcher.run("INCR", key) == 3, "the connection still serves the next batch"
    finally:
        await redis.delete(key, key + ":text")
        await batcher.close()
        await redis.aclose()


async def test_a_refused_connection_fails_every_command_of_the_batch() -> None:
    redis = connect_redis(f"redis://127.0.0.1:{free_port()}/0")
    batcher = PipelineBatcher(redis.connection_pool)
    try:
        outcomes = await asyncio.gather(*(batcher.run("INCR", "k") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes
    finally:
        await batcher.close()
        await redis.aclose()


@pytest.mark.parametrize("stop", ["close", "cancel"])
async def test_a_batch_stopped_before_it_is_sent_fails_its_commands(stop: str) -> None:
    redis = connect_redis(await check_redis())
    batcher = PipelineBatcher(redis.connection_pool)
    try:
        waiters = [asyncio.ensure_future(batcher.run("INCR", "msjx-test:never")) for _ in range(3)]
        await asyncio.sleep(0)  # the waiters issue their commands and start the sender, which has not sent them yet
        if stop == "close":
            await batcher.close()
        else:  # as a loop shutting down cancels every task
            (sender,) = [task for task in asyncio.all_tasks() if task.get_coro().__name__ == "_send"]
            sender.cancel()
        outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
        assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes
    finally:
        await batcher.close()
        await redis.aclose()


async def test_memory_store_forgets_a_second_once_its_signatures_expire() -> None:
    clock = ManualClock(datetime.fromtimestamp(1_000_000, UTC))
    store = MemoryNonceStore(clock)
    created = int(clock.time())
    assert await store.claim("k", "n-000001", created, 300) is True
    assert await store.claim("k", "n-000001", created + 1, 300) is True, "another created is another signature"
    clock.advance(seconds=300)  # created + 300: still inside the window, so its nonce must be remembered
    assert await store.claim("k", "n-000001", created, 300) is False
    clock.advance(seconds=1)  # past created + 300: a replay is refused as expired, so the entry may go
    assert await store.claim("k", "n-000002", created + 301, 300) is True
    assert len(store) == 2, "the expired second was dropped, the next one kept"


async def test_memory_store_stays_bounded_under_a_steady_rate() -> None:
    # 1,200 claims a second for 15 simulated minutes: the entries stop growing after the 300 s window.
    clock = ManualClock(datetime.fromtimestamp(2_000_000, UTC))
    store = MemoryNonceStore(clock)
    sizes = []
    for second in range(900):
        created = int(clock.time())
        for i in range(1200):
            assert await store.claim("k", f"{second:04d}-{i:05d}", created, 300)
        clock.advance(seconds=1)
        if second % 100 == 99:
            sizes.append(len(store))
    assert max(sizes) <= 1200 * 302
    assert sizes[-1] == sizes[-2] == sizes[-3], sizes  # steady


async def test_redis_store_started_is_the_server_start(store: RedisNonceStore) -> None:
    redis = connect_redis(await check_redis())
    try:
        info = await redis.info("server")
    finally:
        await redis.aclose()
    await store.ping()
    expected = time.time() - int(info["uptime_in_seconds"])
    assert abs(store.started - expected) <= 2


def test_a_loss_is_told_once_and_only_when_it_is_newer() -> None:
    epoch = RedisEpoch()
    told: list[float] = []
    epoch.on_loss(lambda: told.append(epoch.nonces_since))
    epoch.forget(epoch.started - 10)  # before what the store already vouches for: nothing newer is lost
    assert told == []
    later = epoch.started + 5
    epoch.forget(later)
    epoch.forget(later)  # the same loss seen again (a second look in the same second)
    epoch.forget(later - 1)
    assert told == [later]
    assert epoch.nonces_since == later
