"""Circuit-breaker state in Redis, so every gateway node sees an upstream open, half-open or closed alike.

Implements adapters.resilience.BreakerStore with two Lua scripts (atomic on the server, one round trip each) and
the same state machine as MemoryBreakerStore; time is the Redis server's, so nodes' clocks need not agree.
Keys: `<prefix>:<upstream>` (state hash) and `<prefix>:<upstream>:w` (the current window's counts).

A closed breaker costs no round trip per call: a node that has just seen it closed lets calls through for
`closed_ttl` seconds (0.2) and counts their successes locally, sending them with the next failure or at most
every `closed_ttl`. So a breaker another node opens is obeyed here within 0.2 s, and the failure ratio always
includes this node's successes. (Two scripts a call were 150 µs of the event loop's time, a quarter of a call.)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from redis.asyncio import Redis

from adapters.resilience import BreakerConfig, BreakerSnapshot, Permit

__all__ = ["RedisBreakerStore", "breaker_prefix"]

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
_KEEP_MS = 24 * 3600 * 1000  # an idle breaker's state is forgotten after a day (closed again)

# KEYS[1] state; ARGV[1] probe lease ms. Returns {allowed, probe, retry_after_ms}.
_ACQUIRE = (
    _NOW
    + """
local s = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'probe_until')
local state = s[1] or 'closed'
if state == 'closed' then return {1, 0, 0} end
local probe_until = tonumber(s[3]) or 0
if state == 'open' then
  local open_until = tonumber(s[2]) or 0
  if now < open_until then return {0, 0, open_until - now} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probes_ok', 0, 'probe_until', 0)
  probe_until = 0
end
if now >= probe_until then
  redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return {1, 1, 0}
end
return {0, 0, probe_until - now}
"""
)

# KEYS[1] state, KEYS[2] window; ARGV: ok, probe, threshold, ratio (per mille), window ms, open ms, probes, keep ms,
# successes counted on the node since it last reported (added to the window's calls before this outcome).
_RECORD = (
    _NOW
    + """
local ok = ARGV[1] == '1'
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local open_ms = tonumber(ARGV[6])
if ARGV[2] == '1' then
  if state ~= 'half_open' then return state end
  if ok then
    local good = redis.call('HINCRBY', KEYS[1], 'probes_ok', 1)
    if good >= tonumber(ARGV[7]) then
      redis.call('DEL', KEYS[1], KEYS[2])
      return 'closed'
    end
    redis.call('HSET', KEYS[1], 'probe_until', 0)
    return 'half_open'
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + open_ms, 'probes_ok', 0, 'probe_until', 0)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]))
  return 'open'
end
local window_ms = tonumber(ARGV[5])
local start = tonumber(redis.call('HGET', KEYS[2], 'start'))
if not start or now - start >= window_ms then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'start', now, 'calls', 0, 'failures', 0)
  redis.call('PEXPIRE', KEYS[2], window_ms * 2)
end
local calls = redis.call('HINCRBY', KEYS[2], 'calls', 1 + tonumber(ARGV[9]))
if ok then return state end
local failures = redis.call('HINCRBY', KEYS[2], 'failures', 1)
if state == 'closed' and failures >= tonumber(ARGV[3]) and failures * 1000 >= tonumber(ARGV[4]) * calls then
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + open_ms, 'probes_ok', 0, 'probe_until', 0)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]))
  redis.call('DEL', KEYS[2])
  return 'open'
end
return state
"""
)


def breaker_prefix(redis_prefix: str, database_url: str) -> str:
    """Under MSJX_REDIS_PREFIX; nodes of one deployment share a database, so its URL names their shared breakers
    (and keeps tests apart)."""
    return f"{redis_prefix}:breaker:" + hashlib.sha256(database_url.encode()).hexdigest()[:12]


class RedisBreakerStore:
    kind = "redis"

    def __init__(
        self, redis: Redis, prefix: str, closed_ttl: float = 0.2, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)
        self._closed_ttl = closed_ttl
        self._clock = clock
        self._closed_until: dict[str, float] = {}  # per upstream: trusted closed until then, without asking
        self._successes: dict[str, int] = {}  # per upstream: successes not yet reported
        self._reported: dict[str, float] = {}  # per upstream: when they were last reported
        self._configs: dict[str, BreakerConfig] = {}  # per upstream: the config those successes were counted under

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    def _seen(self, name: str, closed: bool) -> None:
        if closed:
            self._closed_until[name] = self._clock() + self._closed_ttl
        else:
            self._closed_until.pop(name, None)

    async def acquire(self, name: str, config: BreakerConfig) -> Permit:
        if self._clock() < self._closed_until.get(name, 0.0):
            return Permit(True)
        allowed, probe, retry_after = await self._acquire(
            keys=[self._key(name)], args=[config.probe_lease_ms, max(_KEEP_MS, config.open_ms * 4)]
        )
        permit = Permit(bool(allowed), bool(probe), int(retry_after))
        self._seen(name, permit.allowed and not permit.probe)
        return permit

    async def record(self, name: str, config: BreakerConfig, ok: bool, probe: bool) -> str:
        now = self._clock()
        if ok and not probe and now < self._closed_until.get(name, 0.0):
            self._successes[name] = self._successes.get(name, 0) + 1
            self._configs[name] = config
            if now - self._reported.get(name, 0.0) < self._closed_ttl:
                return "closed"
            return await self._report(name, config)
        return await self._report(name, config, ok, probe)

    async def _report(self, name: str, config: BreakerConfig, ok: bool | None = None, probe: bool = False) -> str:
        """One outcome, sent with the successes counted here since the last report; ok=None: only those."""
        # A probe's outcome changes the state only; the window's counts go with the next ordinary outcome.
        counted = 0 if probe else self._successes.pop(name, 0)
        successes = counted
        if ok is None:
            ok, successes = True, counted - 1  # the last counted success is the outcome sent
        self._reported[name] = self._clock()
        key = self._key(name)
        try:
            state = await self._record(
                keys=[key, key + ":w"],
                args=[
                    int(ok),
                    int(probe),
                    config.failure_threshold,
                    int(config.failure_ratio * 1000),
                    config.window_ms,
                    config.open_ms,
                    config.probes,
                    max(_KEEP_MS, config.open_ms * 4),
                    successes,
                ],
            )
        except BaseException:
            if counted:  # not lost: they go with the next report
                self._successes[name] = self._successes.get(name, 0) + counted
            raise
        state = state.decode() if isinstance(state, bytes) else str(state)
        self._seen(name, state == "closed")
        return state

    async def snapshot(self, name: str) -> BreakerSnapshot:
        key = self._key(name)
        if self._successes.get(name):  # the counts include this node's latest calls
            await self._report(name, self._configs[name])
        state = await self._redis.hget(key, "state")
        window = await self._redis.hmget(key + ":w", "calls", "failures")
        return BreakerSnapshot(state.decode() if state else "closed", int(window[0] or 0), int(window[1] or 0))

    async def reset(self, name: str) -> None:
        key = self._key(name)
        self._closed_until.pop(name, None)
        self._successes.pop(name, None)
        await self._redis.delete(key, key + ":w")
