"""Shared short-lived state (seen nonces): in Redis when configured, so every node agrees; else in-process.
Both say since when they remember: a signature created earlier is refused, since it may have been seen."""

from __future__ import annotations

from typing import Protocol

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.storage.health import Dependency
from gateway.storage.redis import SharedRedis
from schemas.problems import ProblemCode


class NonceStore(Protocol):
    kind: str
    # Unix time before which this store may have forgotten nonces (it started then: a process, or a Redis server
    # without its data). A signature created earlier may have been seen already, so it is refused.
    started: float
    health: Dependency

    async def claim(self, key_id: str, nonce: str, created: int, max_skew: int) -> bool:
        """Record the nonce of a signature created at `created`; False when it was already seen. It is remembered
        while the signature is valid, until `created + max_skew`: past that a replay is refused as expired."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def nonce_store_health() -> Dependency:
    return Dependency("nonce_store", ProblemCode.NONCE_STORE_UNAVAILABLE)


class MemoryNonceStore:
    """One node only: the nonces of each second's signatures in a set, found again by the signature's `created`.

    A replay carries the very `created` it was signed with (the signature covers it), so a nonce is looked up in
    its own second's set only, and a second's set is dropped whole once every signature of that second is past the
    window. Entries live for the skew window after their `created` (300 s), not twice that, and each is a 64-bit
    keyed hash (Python's per-process SipHash of key id and nonce) rather than the strings: about 60 bytes an entry,
    not 250 (under 1,200 req/s the map grew 16.6 MB a minute). A false match needs two of a few hundred thousand
    live entries to share 64 bits: a refusal the client retries, once in ~10^13 requests.
    """

    kind = "memory"
    SWEEP_SECONDS = 1.0

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._time = clock.time  # kept bound: one call per claim, as time.time() would be
        self.started = clock.time()
        self.health = nonce_store_health()
        self._seconds: dict[int, set[int]] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return sum(len(seen) for seen in self._seconds.values())

    async def claim(self, key_id: str, nonce: str, created: int, max_skew: int) -> bool:
        now = self._time()
        if now >= self._next_sweep:
            self._sweep(now, max_skew)
        seen = self._seconds.get(created)
        if seen is None:
            seen = self._seconds[created] = set()
        marker = hash((key_id, nonce))
        if marker in seen:
            return False
        seen.add(marker)
        return True

    def _sweep(self, now: float, max_skew: int) -> None:
        self._next_sweep = now + self.SWEEP_SECONDS
        for second in [second for second in self._seconds if second + max_skew < now]:
            del self._seconds[second]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisNonceStore:
    """Every node sees the same nonces: SET NX EX is atomic on the Redis server. Claims share pipelines.

    `started` is when the Redis server started (its own clock less its uptime), read on every new connection: a
    restart breaks every connection, so the first command to the new server learns it, before any claim.
    """

    kind = "redis"

    def __init__(self, redis: SharedRedis, clock: Clock = SYSTEM_CLOCK) -> None:
        self._redis = redis
        self._time = clock.time
        self.epoch = redis.epoch
        self._batcher = redis.batcher
        self._prefix = redis.key("nonce") + ":"
        self.health = nonce_store_health()

    @property
    def started(self) -> float:
        return self.epoch.nonces_since

    async def claim(self, key_id: str, nonce: str, created: int, max_skew: int) -> bool:
        key = f"{self._prefix}{key_id}:{nonce}"
        ttl = max(1, created + max_skew - int(self._time()) + 1)
        return bool(await self._batcher.run("SET", key, b"1", "NX", "EX", ttl))

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        """Nothing of its own to release: the shared client is closed by its owner, the runtime."""
