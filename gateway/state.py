"""Shared short-lived state (seen nonces): in Redis when configured, so every node agrees; else in-process."""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Protocol

from redis.asyncio import BlockingConnectionPool, Redis


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
    """Every node sees the same nonces: SET NX EX is atomic on the Redis server.

    Claims made in the same turn of the event loop go out together, one pipeline and one round trip: redis-py
    spends about twice the CPU on a lone command as on its share of a pipeline (docs/performance.md). Each
    SET NX stays its own atomic command, so a nonce claimed twice in one pipeline is still granted once.
    """

    kind = "redis"

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[tuple[str, int, asyncio.Future[bool]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def claim(self, key_id: str, nonce: str, ttl: int) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((f"msjx:nonce:{key_id}:{nonce}", ttl, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
            self._in_flight.add(self._sender)
            self._sender.add_done_callback(self._in_flight.discard)
        return await future

    async def _send(self) -> None:
        try:
            await asyncio.sleep(0)  # one turn of the loop: the claims of requests read in it join this pipeline
        finally:
            batch, self._pending = self._pending, []
            self._sender = None  # claims from now on start the next pipeline; none waits for this round trip
        try:
            async with self._redis.pipeline(transaction=False) as pipeline:
                for key, ttl, _ in batch:
                    pipeline.set(key, b"1", nx=True, ex=ttl)
                results = await pipeline.execute()
        except BaseException as exc:  # Redis down, timeout, shutdown: every waiter fails, none is left hanging
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError("nonce store closed"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), granted in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(bool(granted))

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        for _, _, future in self._pending:
            if not future.done():
                future.set_exception(ConnectionError("nonce store closed"))
        self._pending = []
        await self._redis.aclose()


def connect_redis(url: str, max_connections: int = 64) -> Redis:
    # redis-py's default pool raises MaxConnectionsError past its limit, which would fail a burst of requests;
    # a blocking pool makes the burst wait (up to `timeout`) for a connection instead.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=2,
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)
