"""Circuit-breaker state in Redis, so every gateway node sees an upstream open, half-open or closed alike.

Implements adapters.resilience.BreakerStore with two Lua scripts (atomic on the server, one round trip each) and
the same state machine as MemoryBreakerStore; time is the Redis server's, so nodes' clocks need not agree.
Keys: `<prefix>:<upstream>` (state hash) and `<prefix>:<upstream>:w` (the current window's counts).
"""

from __future__ import annotations

import hashlib

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

# KEYS[1] state, KEYS[2] window; ARGV: ok, probe, threshold, ratio (per mille), window ms, open ms, probes, keep ms.
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
local calls = redis.call('HINCRBY', KEYS[2], 'calls', 1)
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


def breaker_prefix(database_url: str) -> str:
    """Nodes of one deployment share a database, so its URL names their shared breakers (and keeps tests apart)."""
    return "msjx:breaker:" + hashlib.sha256(database_url.encode()).hexdigest()[:12]


class RedisBreakerStore:
    kind = "redis"

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._record = redis.register_script(_RECORD)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    async def acquire(self, name: str, config: BreakerConfig) -> Permit:
        allowed, probe, retry_after = await self._acquire(
            keys=[self._key(name)], args=[config.probe_lease_ms, max(_KEEP_MS, config.open_ms * 4)]
        )
        return Permit(bool(allowed), bool(probe), int(retry_after))

    async def record(self, name: str, config: BreakerConfig, ok: bool, probe: bool) -> str:
        key = self._key(name)
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
            ],
        )
        return state.decode() if isinstance(state, bytes) else str(state)

    async def snapshot(self, name: str) -> BreakerSnapshot:
        key = self._key(name)
        state = await self._redis.hget(key, "state")
        window = await self._redis.hmget(key + ":w", "calls", "failures")
        return BreakerSnapshot(state.decode() if state else "closed", int(window[0] or 0), int(window[1] or 0))

    async def reset(self, name: str) -> None:
        key = self._key(name)
        await self._redis.delete(key, key + ":w")

    async def close(self) -> None:
        await self._redis.aclose()
