"""Shared short-lived state (seen nonces): in Redis when configured, so every node agrees; else in-process."""

from __future__ import annotations

import asyncio
import heapq
import inspect
import time
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline

# Adds one command to a pipeline (a plain command returns the pipeline; a registered script, an awaitable).
Queue = Callable[[Pipeline], Any]


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


class PipelineBatcher:
    """Redis commands queued in the same turn of the event loop go out together: one pipeline, one round trip.

    redis-py spends about twice the CPU on a lone command as on its share of a pipeline (docs/performance.md).
    Each command stays its own atomic command on the server (no MULTI), so batching changes nothing of what
    any one of them does; a failure of the pipeline reaches every command in it.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: list[tuple[Queue, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, queue: Queue) -> Any:
        """Add one command to the next pipeline with `queue(pipeline)`; return its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((queue, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
            self._in_flight.add(self._sender)
            self._sender.add_done_callback(self._in_flight.discard)
        return await future

    async def _send(self) -> None:
        try:
            await asyncio.sleep(0)  # one turn of the loop: the commands of requests read in it join this pipeline
        finally:
            batch, self._pending = self._pending, []
            self._sender = None  # commands from now on start the next pipeline; none waits for this round trip
        try:
            async with self.redis.pipeline(transaction=False) as pipeline:
                for queue, _ in batch:
                    queued = queue(pipeline)
                    if inspect.isawaitable(queued):  # a registered Lua script queues itself asynchronously
                        await queued
                results = await pipeline.execute()
        except BaseException as exc:  # Redis down, timeout, shutdown: every waiter fails, none is left hanging
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError("redis closed"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(ConnectionError("redis closed"))
        self._pending = []


class RedisNonceStore:
    """Every node sees the same nonces: SET NX EX is atomic on the Redis server. Claims share pipelines."""

    kind = "redis"

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._batcher = PipelineBatcher(redis)

    async def claim(self, key_id: str, nonce: str, ttl: int) -> bool:
        key = f"msjx:nonce:{key_id}:{nonce}"
        return bool(await self._batcher.run(lambda pipeline: pipeline.set(key, b"1", nx=True, ex=ttl)))

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._batcher.close()
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
