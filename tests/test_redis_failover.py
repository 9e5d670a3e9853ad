"""Redis servers that come back with data, on servers of the test's own:

- a failover: the address now leads to another server (a replica promoted, up since before the calls), which never
  got the last nonces (the replication lag). The gateway treated it as a restart from the replica's own start time,
  so a captured request signed before the failover was accepted again; now nothing signed before the switch is;
- a restart of a Redis that keeps its data (AOF): today's quota count came back, and the rebuild from the audit
  records added the same calls again (3 read as 6). The rebuild now makes the count at least the audited calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.settings import load_settings
from tests.helpers.calls import assert_problem, signed
from tests.helpers.faults import OwnRedis
from tests.helpers.gateways import running_gateway
from tests.helpers.quotas import admin_grant, call_for_purpose
from tests.helpers.services import create_test_database, drop_database, free_port
from tests.test_store_faults import _grant_info

pytestmark = pytest.mark.slow


class Switch:
    """A TCP forwarder standing for a virtual IP: new connections go to `target`; `switch` moves it and cuts the
    connections made before, as a failover does."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Switch:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def switch(self, target: int) -> None:
        self.target = target
        self._cut()

    def _cut(self) -> None:
        for writer in list(self._links):
            writer.close()
        self._links.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._links.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    url = await create_test_database()
    try:
        yield url
    finally:
        await drop_database(url)


async def test_a_failover_to_a_replica_that_lacks_the_last_nonces_refuses_their_replay(
    tmp_path: Path, credit_url: str
) -> None:
    replica = OwnRedis(tmp_path / "replica")  # up first: its start time is older than every call below
    (tmp_path / "replica").mkdir()
    replica.start()
    await asyncio.sleep(1.1)
    primary = OwnRedis(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    primary.start()
    try:
        async with Switch(primary.port) as switch, database() as database_url:
            settings = load_settings(
                data_dir=tmp_path / "data",
                upstream_urls={"credit": credit_url},
                redis_url=f"redis://127.0.0.1:{switch.port}/0",
                database_url=database_url,
            )
            async with running_gateway(settings) as gw:
                captured = signed(gw, gw.platform)
                async with httpx.AsyncClient(timeout=30) as client:
                    assert (await client.send(captured)).status_code == 200
                    assert_problem(await client.send(captured), 401, "nonce_replayed")
                    await asyncio.sleep(1.05 - time.time() % 1)  # the switch happens in a later second
                    switch.switch(replica.port)
                    for _ in range(50):  # the pool's connections were cut: the next ones reach the replica
                        answer = await client.send(signed(gw, gw.platform))
                        if answer.status_code == 200:
                            break
                        await asyncio.sleep(0.1)
                    assert answer.status_code == 200, answer.text
                    assert_problem(await client.send(captured), 401, "signature_before_restart")
    finally:
        primary.stop()
        replica.stop()


async def test_a_redis_that_kept_its_data_counts_no_call_twice(tmp_path: Path, credit_url: str) -> None:
    redis = OwnRedis(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    redis.start()
    try:
        async with database() as database_url:
            settings = load_settings(
                data_dir=tmp_path / "data",
                upstream_urls={"credit": credit_url},
                redis_url=redis.url,
                database_url=database_url,
            )
            async with running_gateway(settings) as gw:
                await admin_grant(gw, daily_quota=5, purpose="AOF-1")
                assert [(await call_for_purpose(gw, "AOF-1")).status_code for _ in range(3)] == [200] * 3
                redis.kill()
                redis.start()  # the same port; the AOF brings the counters back
                for _ in range(100):
                    if (await call_for_purpose(gw, "XM-2025-001")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                assert await gw.runtime.quotas.used_today(_grant_info(gw, "AOF-1")) == 3
                statuses = [(await call_for_purpose(gw, "AOF-1")).status_code for _ in range(3)]
                assert statuses == [200, 200, 429]
    finally:
        redis.stop()
