"""Shared short-lived state (seen nonces): in Redis when configured, so every node agrees; else in-process."""

from __future__ import annotations

import heapq
import time
from typing import Protocol

from redis.asyncio import Redis


class NonceStore(Protocol):
    kind: str

    async def claim(self, key_id: str, nonce: str, ttl: int) -> bool:
        """Record the nonce; False when it was already seen within its time to live."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class MemoryNonceStore:
    """One node only: a dict with expiry times, pruned from a heap so memory stays bounded by the ttl window."""

    kind = "memory"

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []

    async def claim(self, key_id: str, nonce: str, ttl: int) -> bool:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, old = heapq.heappop(self._expiry)
            if self._seen.get(old, now + 1) <= now:
                del self._seen[old]
        key = f"{key_id}\x00{nonce}"
        if key in self._seen:
            return False
        expires = now + ttl
        self._seen[key] = expires
        heapq.heappush(self._expiry, (expires, key))
        return True

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisNonceStore:
    """Every node sees the same nonces: SET NX EX is atomic on the Redis server."""

    kind = "redis"

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def claim(self, key_id: str, nonce: str, ttl: int) -> bool:
        return bool(await self._redis.set(f"msjx:nonce:{key_id}:{nonce}", b"1", nx=True, ex=ttl))

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


def connect_redis(url: str) -> Redis:
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=30)
