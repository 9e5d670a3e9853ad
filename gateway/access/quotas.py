"""A grant's daily quota and rate limit, counted with the `limits` library: in Redis when MSJX_REDIS_URL is set,
so that every node counts the same calls, else in this process's memory (one node only).

Both are fixed windows: Redis INCR is atomic, so a quota of N allows exactly N calls however many nodes
share it. The rate limit is checked first, so a call refused for its rate does not spend the day's quota.
A daily quota runs from midnight to midnight Beijing time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from limits import RateLimitItem, RateLimitItemPerDay, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from gateway.access.directory import GrantInfo
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.problems import Problem
from gateway.storage.health import Dependency
from gateway.storage.redis import PipelineBatcher, RedisEpoch, SharedRedis
from schemas.problems import ProblemCode
from schemas.times import china_date, seconds_to_next_china_day

log = logging.getLogger("msjx.quotas")


@lru_cache(maxsize=4096)
def rate_item(rate_limit: str) -> RateLimitItem:
    """`20/second` as a `limits` item; parsed once per distinct string (grants share a handful)."""
    return parse(rate_limit)


@lru_cache(maxsize=4096)
def quota_item(daily_quota: int) -> RateLimitItem:
    return RateLimitItemPerDay(daily_quota)


@lru_cache(maxsize=4096)
def window_keys(rate: RateLimitItem, day: RateLimitItem, scope: str, day_id: str) -> tuple[str, str]:
    """The keys `limits` counts a scope's rate and day windows under (`key_for`), made once per scope and day."""
    return rate.key_for("rate", scope), day.key_for("quota", scope, day_id)


class QuotaExceeded(Problem):
    """429 with Retry-After: the grant's rate limit or its daily quota is used up."""

    def __init__(self, code: ProblemCode, detail: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(code, detail, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


class LoopMemoryStorage(MemoryStorage):
    """`limits`' in-process storage, its counters increased without a task or a lock per call.

    The parent's `incr` starts an asyncio task to sweep expired keys whenever the last sweep has finished, which
    under load is every call, and takes an asyncio.Lock around a dict update that nothing can interleave (it does
    not await): about 5 µs a call on the event loop (docs/performance.md). Here expired keys are swept inline, at
    most once a second; a key past its expiry is reset when it is next counted, as the parent does.

    Its expiries are the counter store's time, not the gateway's `Clock`: the parent compares them with
    `time.time()` itself (as Redis compares its TTLs with its own clock), so this reads the same.
    """

    SWEEP_SECONDS = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        return self._count(key, expiry, now, amount)

    async def incr_both(
        self, rate_key: str, rate_expiry: int, rate_amount: int, day_key: str, day_expiry: int
    ) -> tuple[int, int]:
        """`PipelinedRedisStorage.incr_both` in memory: the rate window counted as `incr` counts it and, if that lets
        the call through, the day window; the day's count is 0 when it was not counted. One call where two `limits`
        hits each built their key and passed the storage's wrappers: a check cost 9.7–25.6 µs that way and 5.1–9.8
        this way, in process on a loaded host (docs/performance.md)."""
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        rate = self._count(rate_key, rate_expiry, now)
        if rate > rate_amount:
            return rate, 0
        return rate, self._count(day_key, day_expiry, now)

    def _count(self, key: str, expiry: float, now: float, amount: int = 1) -> int:
        if self.expirations.get(key, 0) <= now:  # past its expiry: reset, as the parent does when it is next counted
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
        value = self.storage[key] + amount
        self.storage[key] = value
        if value == amount:
            self.expirations[key] = now + expiry
        return value

    def raise_to(self, key: str, count: int, expiry: float) -> None:
        """Make a counter at least `count`, with `expiry` seconds to live if it is new (Quotas.restore)."""
        now = time.time()
        if self.expirations.get(key, 0) <= now:
            self.storage.pop(key, None)
            self.expirations[key] = now + expiry
        self.storage[key] = max(self.storage[key], count)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_SECONDS
        for key in [key for key, expires in self.expirations.items() if expires <= now]:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)


# Both windows of a call in one script, on `limits`' own keys, each counted exactly as `limits`' INCR-and-EXPIRE
# script counts it; the day window only when the rate window lets the call through, as Quotas.check does in memory.
SCRIPT_COUNT_BOTH = """
local rate = redis.call("incrby", KEYS[1], 1)
if rate == 1 then redis.call("expire", KEYS[1], ARGV[1]) end
if rate > tonumber(ARGV[2]) then return {rate, 0} end
local day = redis.call("incrby", KEYS[2], 1)
if day == 1 then redis.call("expire", KEYS[2], ARGV[3]) end
return {rate, day}
"""


class PipelinedRedisStorage(RedisStorage):
    """`limits`' Redis storage, whose counter increments share pipelines with those of other requests.

    The increment is the very script `limits` runs (its own INCR-and-EXPIRE Lua on its own key), queued
    in the pipeline of the current event-loop turn instead of sent alone; a grant with both a rate limit and a
    daily quota has both windows counted by one script (`incr_both`), so a call costs one share of a pipeline
    rather than two lone round trips (docs/performance.md). Reads go as `limits` sends them.
    `tests/test_quotas.py` runs the quota rules on this storage against the real server.
    """

    def __init__(self, batcher: PipelineBatcher, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batcher = batcher

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        bridge = self.bridge
        prefixed = bridge.prefixed_key(key)
        # EVAL with the script's text, not EVALSHA: the server keeps the compiled script either way, and a batch has no
        # place to send a command again that a restarted server refused with NOSCRIPT.
        script = bridge.SCRIPT_INCR_EXPIRE
        try:
            return int(await self._batcher.run("EVAL", script, 1, prefixed, expiry, amount))
        except self.base_exceptions as exc:  # as limits does: its callers catch StorageError
            raise StorageError(exc) from exc

    async def incr_both(
        self, rate_key: str, rate_expiry: int, rate_amount: int, day_key: str, day_expiry: int
    ) -> tuple[int, int]:
        """Count a call in its rate window and, if that lets it through, its day window: one script, one share of
        a pipeline. Returns both counts (the day's is 0 when the rate refused the call and it was not counted)."""
        bridge = self.bridge
        keys = (bridge.prefixed_key(rate_key), bridge.prefixed_key(day_key))
        arguments = (rate_expiry, rate_amount, day_expiry)
        try:
            counts = await self._batcher.run("EVAL", SCRIPT_COUNT_BOTH, 2, *keys, *arguments)
        except self.base_exceptions as exc:
            raise StorageError(exc) from exc
        return int(counts[0]), int(counts[1])


# Raise a day window's counter to the calls audited before a Redis lost its keys (a restart, a failover, a flush), if
# it holds fewer, once per loss however many nodes rebuild (the marker), keeping the counter's expiry, or setting one
# on a new counter.
SCRIPT_RESTORE = """
if not redis.call("set", KEYS[2], "1", "NX", "EX", ARGV[2]) then return -1 end
local count = tonumber(redis.call("get", KEYS[1]) or "0")
local spent = tonumber(ARGV[1])
if count < spent then
    redis.call("set", KEYS[1], spent, "KEEPTTL")
    count = spent
end
if redis.call("ttl", KEYS[1]) < 0 then redis.call("expire", KEYS[1], ARGV[2]) end
return count
"""


class Quotas:
    def __init__(
        self,
        storage: Storage,
        kind: str,
        redis: Redis | None = None,
        epoch: RedisEpoch | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._storage = storage
        self._limiter = FixedWindowRateLimiter(storage)
        self._redis = redis
        self.kind = kind
        self.epoch = epoch  # with Redis: when its server restarted, so the runtime can rebuild the windows
        self.clock = clock
        self.started = clock.time()  # in memory: the counters hold nothing from before this
        self.health = Dependency("quota_store", ProblemCode.QUOTA_STORE_UNAVAILABLE)
        self.rebuilding: asyncio.Task[None] | None = None
        self.rebuilds = 0

    @property
    def storage(self) -> Storage:
        """Where the counters live; other per-window counts (gateway/pipeline/unauthenticated.py) share it."""
        return self._storage

    @classmethod
    def build(cls, redis: SharedRedis | None, clock: Clock = SYSTEM_CLOCK) -> Quotas:
        """Counters in the process's shared Redis (its pool lent to `limits`, keys under `<prefix>:limits`), or in
        this process when there is none."""
        if redis is not None:
            storage = PipelinedRedisStorage(
                redis.batcher,
                "async+redis://",
                implementation="redispy",
                key_prefix=redis.key("limits"),
                wrap_exceptions=True,
                connection_pool=redis.client.connection_pool,
            )
            return cls(storage, "redis", redis.client, redis.epoch, clock)
        log.warning("MSJX_REDIS_URL is unset: quotas and rate limits are counted in this process, so run ONE node only")
        return cls(LoopMemoryStorage(wrap_exceptions=True), "memory", clock=clock)

    async def check(self, grant: GrantInfo, now: datetime | None = None) -> None:
        """Count one call under `grant`, or raise QuotaExceeded (429) or a 503 when the counter store is down."""
        if grant.rate_limit is None and grant.daily_quota is None:
            return
        scope = grant.quota_scope
        rate = rate_item(grant.rate_limit) if grant.rate_limit is not None else None
        day = quota_item(grant.daily_quota) if grant.daily_quota is not None else None
        moment = now or self.clock.now()
        day_id = china_date(moment).isoformat() if day is not None else ""
        rebuilds = self.rebuilds
        if self.rebuilding is not None and not self.rebuilding.done():
            await self._rebuilt()
        try:
            storage = self._storage
            if rate is not None and day is not None and isinstance(storage, PipelinedRedisStorage | LoopMemoryStorage):
                rate_key, day_key = window_keys(rate, day, scope, day_id)
                rate_count, day_count = await storage.incr_both(
                    rate_key, rate.get_expiry(), rate.amount, day_key, day.get_expiry()
                )
                rate_ok, day_ok = rate_count <= rate.amount, day_count <= day.amount
            else:
                rate_ok = rate is None or await self._limiter.hit(rate, "rate", scope)
                day_ok = not rate_ok or day is None or await self._limiter.hit(day, "quota", scope, day_id)
            if day_ok and day is not None and self.rebuilds != rebuilds:
                # Redis restarted while this call was counted, on a window that did not hold the day's calls yet:
                # judge the call again once the window is rebuilt from the audit records.
                await self._rebuilt()
                day_ok = await self._storage.get(day.key_for("quota", scope, day_id)) <= day.amount
            if not rate_ok:
                assert rate is not None
                stats = await self._limiter.get_window_stats(rate, "rate", scope)
                raise QuotaExceeded(
                    ProblemCode.RATE_LIMITED,
                    f"the grant allows {grant.rate_limit}; retry after the window resets",
                    # `limits` gives the reset as the machine's time plus the window's TTL, whatever our clock says.
                    stats.reset_time - time.time(),
                )
            if not day_ok:
                raise QuotaExceeded(
                    ProblemCode.QUOTA_EXHAUSTED,
                    f"the grant's daily quota of {grant.daily_quota} calls is used up until midnight Beijing time",
                    seconds_to_next_china_day(moment),
                )
        except StorageError as exc:
            self.health.failed(exc.storage_error)
            raise self.health.problem(
                "the call could not be counted against its quota, so it was not made; retry later"
            ) from None
        self.health.succeeded()

    def rebuild_with(self, task: asyncio.Task[None]) -> None:
        """`task` rebuilds the day windows (Redis restarted): calls wait for it before they are counted."""
        self.rebuilds += 1
        self.rebuilding = task

    async def _rebuilt(self) -> None:
        while (task := self.rebuilding) is not None:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():  # this call itself was cancelled
                    raise
                if task is self.rebuilding:  # cancelled without a successor (shutdown)
                    return
                continue  # replaced by a newer rebuild (Redis restarted again): wait for that one
            except Exception:  # a failed rebuild was logged; counting goes on from what is there
                return
            return

    async def connect(self) -> None:
        """With Redis: reach the server, and so learn when it started (the first connection asks)."""
        if self._redis is not None:
            await self._redis.ping()

    @property
    def store_started(self) -> tuple[float, str]:
        """Since when the counters hold the calls, and a name for that life of the store."""
        if self.epoch is not None:
            since, run = self.epoch.nonces_since, self.epoch.run_id or "unknown"
            # A loss without a restart (a flush, an eviction) keeps the run: its moment names that life.
            return since, run if since == self.epoch.started else f"{run}:{since:.0f}"
        return self.started, "memory"

    async def restore(self, scope: str, daily_quota: int, lost: int, day: date, store_run: str) -> None:
        """Make the day window of `scope` (a grant, or a sharing request's grants) count at least `lost` calls: those
        audited before the counter store (re)started or lost its keys, as `store_run`. Once per `store_run`.

        At least, not in addition: a Redis that kept its data (AOF, a snapshot, a replica promoted in a failover)
        already counts some or all of them, and adding them again doubled today's count after a restart (3 calls
        read as 6 on an AOF Redis). After a flush the counter holds the calls made until the watch saw it, which
        the audit records hold too. Each side counts a call once, so the larger never counts one twice."""
        item = quota_item(daily_quota)
        key = item.key_for("quota", scope, day.isoformat())
        if isinstance(self._storage, PipelinedRedisStorage):
            assert self._redis is not None
            prefixed = self._storage.bridge.prefixed_key(key)
            marker = f"{prefixed}:rebuilt:{store_run}"
            await self._redis.eval(SCRIPT_RESTORE, 2, prefixed, marker, lost, item.get_expiry())  # type: ignore[misc]
            return
        assert isinstance(self._storage, LoopMemoryStorage)
        self._storage.raise_to(key, lost, item.get_expiry())

    async def used_today(self, grant: GrantInfo, now: datetime | None = None) -> int | None:
        """Calls counted today against the grant's daily quota (None when it has none)."""
        if grant.daily_quota is None:
            return None
        moment = now or self.clock.now()
        item = quota_item(grant.daily_quota)
        stats = await self._limiter.get_window_stats(item, "quota", grant.quota_scope, china_date(moment).isoformat())
        return grant.daily_quota - stats.remaining

    async def close(self) -> None:
        """Nothing of its own to release: the shared Redis client is closed by its owner, the runtime."""
