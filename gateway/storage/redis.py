"""This process's one Redis client: a single connection pool that nonces, quota counters, circuit breakers and
payment locks share, the pipeline batcher they queue commands in, and the key prefix every key starts with."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

log = logging.getLogger("msjx.state")

# Adds one command to a pipeline (a plain command returns the pipeline; a registered script, an awaitable).
Queue = Callable[[Pipeline], Any]
# Enough for the busiest two users of the pool before it was shared (nonces and quotas had 64 each); their
# commands go out in pipelines, so a burst needs far fewer, and a burst beyond waits for a connection.
MAX_CONNECTIONS = 128


class SharedRedis:
    """The client every Redis user of this process receives (built once, by the runtime, from the settings).

    Each new connection first learns whether the server restarted (`epoch`); commands queued in one turn of the
    event loop share a pipeline (`batcher`); `key()` starts every key with MSJX_REDIS_PREFIX, so gateways with
    different prefixes share a Redis without seeing each other's nonces, counters, breakers or locks.
    """

    def __init__(self, url: str, prefix: str, max_connections: int = MAX_CONNECTIONS) -> None:
        self.prefix = prefix
        self.epoch = RedisEpoch()
        self.client = connect_redis(url, max_connections, epoch=self.epoch)
        self.batcher = PipelineBatcher(self.client)

    def key(self, *parts: str) -> str:
        """`<prefix>:<part>:<part>...`."""
        return ":".join((self.prefix, *parts))

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.batcher.close()
        await self.client.aclose()


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


class RedisEpoch:
    """When the Redis server behind a client started, learnt on each new connection before it is used.

    Redis without persistence (or with a snapshot older than its last writes) forgets nonces and counters when it
    restarts; its `run_id` changes with every start. On a change, `started` moves to the new server's start and
    `on_restart` callbacks run (quota windows are rebuilt from the audit records); not on the first connection,
    when the runtime starting does the same.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.blind = False  # INFO is refused: restarts go unnoticed (logged once)
        self.started = time.time()  # until the first connection says otherwise: nothing before now is known
        self._callbacks: list[Callable[[], None]] = []

    def on_restart(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    async def connected(self, connection: Any) -> None:
        """redis-py's `redis_connect_func`: the usual handshake, then INFO server."""
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        try:
            info = _info_fields(await connection.read_response())
        except ResponseError as exc:  # INFO renamed away or denied by an ACL: the store still works, blind
            if not self.blind:
                self.blind = True
                log.warning(
                    "Redis refuses INFO (%s): a Redis restart cannot be noticed, so requests signed before it are"
                    " not refused and quota windows are not rebuilt; allow INFO for the gateway's user",
                    exc,
                )
            return
        run_id = info.get("run_id")
        if run_id is None or run_id == self.run_id:
            return
        now = int(info.get("server_time_usec", time.time() * 1e6)) / 1e6
        first = self.run_id is None
        self.run_id = run_id
        self.started = now - int(info.get("uptime_in_seconds", 0))
        if first:
            return
        log.warning(
            "Redis restarted (run_id %s, up %s s): state it held before is rebuilt or refused",
            run_id[:8],
            info.get("uptime_in_seconds"),
        )
        for callback in self._callbacks:
            callback()


def _info_fields(raw: Any) -> dict[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def connect_redis(url: str, max_connections: int = 64, epoch: RedisEpoch | None = None) -> Redis:
    """A client whose burst of commands waits for a free connection; with `epoch`, each new connection first learns
    whether the server restarted."""
    options: dict[str, Any] = {"redis_connect_func": epoch.connected} if epoch is not None else {}
    # redis-py's default pool raises MaxConnectionsError past its limit, which would fail a burst of requests;
    # a blocking pool makes the burst wait (up to `timeout`) for a connection instead.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=2,
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=30,
        **options,
    )
    return Redis(connection_pool=pool)
