"""This process's one Redis client: a single connection pool that nonces, quota counters, circuit breakers and
payment locks share, the pipeline batcher they queue commands in, and the key prefix every key starts with."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

log = logging.getLogger("msjx.state")

# One Redis command and its arguments, as hiredis packs them.
Argument = str | bytes | int | float
Command = tuple[Argument, ...]
# MSJX_REDIS_MAX_CONNECTIONS' default: enough for the busiest two users of the pool before it was shared (nonces and
# quotas had 64 each); their commands go out in pipelines, so a burst needs far fewer (one connection answered 60 calls
# at once), and a burst beyond waits for a connection.
MAX_CONNECTIONS = 128


class SharedRedis:
    """The client every Redis user of this process receives (built once, by the runtime, from the settings).

    Each new connection first learns whether the server restarted (`epoch`); commands issued in one turn of the
    event loop share one write and one round trip (`batcher`); `key()` starts every key with MSJX_REDIS_PREFIX, so
    gateways with different prefixes share a Redis without seeing each other's nonces, counters, breakers or locks.
    """

    def __init__(self, url: str, prefix: str, max_connections: int = MAX_CONNECTIONS) -> None:
        self.prefix = prefix
        self.epoch = RedisEpoch()
        self.client = connect_redis(url, max_connections, epoch=self.epoch)
        self.batcher = PipelineBatcher(self.client.connection_pool)

    def key(self, *parts: str) -> str:
        """`<prefix>:<part>:<part>...`."""
        return ":".join((self.prefix, *parts))

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.batcher.close()
        await self.client.aclose()


class PipelineBatcher:
    """Redis commands issued in the same turn of the event loop go out together: one write, one round trip.

    Each command stays its own atomic command on the server (no MULTI), so batching changes nothing of what any one of
    them does. The commands are packed by hiredis and written on a connection of the client's pool, and the replies
    read back in order, without redis-py's Pipeline, whose packing and bookkeeping cost 1.5 and 1.8 times the CPU a
    command (means in process, batches of 2 and 9: docs/performance.md). A command's error reply fails that command
    alone; a failed connection fails every command whose reply it had not yet brought.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._pending: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, *command: Argument) -> Any:
        """Send `command` (e.g. "SET", key, value, "NX") in the next batch; return the server's reply as RESP gives
        it (bytes, int, a list, or None), or raise its error."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
            self._in_flight.add(self._sender)
            self._sender.add_done_callback(self._sender_done)
        return await future

    def _take(self) -> list[tuple[Command, asyncio.Future[Any]]]:
        batch, self._pending = self._pending, []
        self._sender = None  # commands from now on start the next batch; none waits for this round trip
        return batch

    def _sender_done(self, sender: asyncio.Task[None]) -> None:
        self._in_flight.discard(sender)
        if sender.cancelled() and self._sender is sender:  # stopped before it took its batch: none is left hanging
            _closed(self._take())

    async def _send(self) -> None:
        await asyncio.sleep(0)  # one turn of the loop: the commands of requests read in it join this batch
        batch = self._take()
        connection: Any = None
        try:
            connection = await self._pool.get_connection()
            await connection.send_packed_command(b"".join([hiredis.pack_command(command) for command, _ in batch]))
            for _, future in batch:
                try:
                    reply = await connection.read_response()
                except ResponseError as exc:  # this command's error; the replies of the others follow it
                    _settle(future, exc)
                else:
                    _settle(future, reply)
        except BaseException as exc:  # Redis down, timeout, shutdown: every waiter left fails, none is left hanging
            failure = exc if isinstance(exc, Exception) else RedisConnectionError("redis closed")
            for _, future in batch:
                _settle(future, failure)
            if connection is not None:
                # Replies may still be on their way: the connection must not serve another batch as it is.
                with contextlib.suppress(Exception):
                    await connection.disconnect()
            if not isinstance(exc, Exception):
                raise
        finally:
            if connection is not None:
                await self._pool.release(connection)

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        _closed(self._pending)
        self._pending = []


def _closed(batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
    for _, future in batch:
        _settle(future, RedisConnectionError("redis closed"))


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():  # its waiter was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class RedisEpoch:
    """When the Redis server behind a client started, learnt on each new connection before it is used.

    Redis without persistence (or with a snapshot older than its last writes) forgets nonces and counters when it
    restarts; its `run_id` changes with every start, and with a failover to another server. On a change, `started`
    moves to the new server's start, and what was held before the change is taken as lost (`forget`): nonces from
    before it are refused (`nonces_since`), and `on_loss` callbacks run (quota windows are rebuilt from the audit
    records). Not on the first connection, when the runtime starting does the same. A flush or an eviction seen by
    the watch (gateway/storage/redis_eviction.py) is a loss too, through `forget`.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.blind = False  # INFO is refused: restarts go unnoticed (logged once)
        self.started = time.time()  # until the first connection says otherwise: nothing before now is known
        # Since when the nonces this server holds are all there is: its start, or later when it dropped keys or
        # another server took its place (a failover keeps the replica's start time but loses the replication lag).
        self.forgotten = 0.0
        self._callbacks: list[Callable[[], None]] = []

    def on_loss(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def forget(self, at: float) -> None:
        """The server lost keys by `at` (restarted, was replaced, evicted or flushed them): no nonce or counter from
        before it is known any more. The callbacks run when that moves `nonces_since` on."""
        if at > self.nonces_since:
            self.forgotten = at
            self._tell()

    def _tell(self) -> None:
        for callback in self._callbacks:
            callback()

    @property
    def nonces_since(self) -> float:
        return max(self.started, self.forgotten)

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
        self.forgotten = max(self.forgotten, now)
        self._tell()


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
