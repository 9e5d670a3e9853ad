"""A PostgreSQL connection that stops answering without being closed (a firewall that drops an idle flow's packets,
a network partition, a frozen VM) must not hold the calls: each waited on its audit record for good, until the
client gave up (every call of four timed out after 30 s). Now a batch whose commit passes MSJX_AUDIT_COMMIT_DEADLINE
is given up: its calls get 503 `audit_unavailable` (no data released), the connection is dropped, and the next
batch commits on a new one. The test stands a TCP forwarder between the gateway and PostgreSQL that stops relaying
the connections open at one moment, while new ones pass."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.settings import load_settings
from tests.helpers.calls import assert_problem
from tests.helpers.gateways import PURPOSE, running_gateway
from tests.helpers.quotas import call_for_purpose
from tests.helpers.services import REDIS_URL, create_test_database, drop_database

pytestmark = pytest.mark.slow
DEADLINE = 1.0


class Freezer:
    """Forwards TCP to `target`; `freeze` stops relaying (without closing) the connections open then, `thaw` lets
    them go on."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._frozen: list[asyncio.Event] = []
        self._open: list[asyncio.Event] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Freezer:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.thaw()
        assert self._server is not None
        self._server.close()

    def freeze(self) -> None:
        for flowing in self._open:
            flowing.clear()
        self._frozen, self._open = self._open, []

    def thaw(self) -> None:
        for flowing in self._frozen:
            flowing.set()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        flowing = asyncio.Event()
        flowing.set()
        self._open.append(flowing)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    await flowing.wait()
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_connection_that_stops_answering_costs_one_batch_not_every_call(
    tmp_path: Path, credit_url: str
) -> None:
    database_url = await create_test_database()
    port = urlsplit(database_url).port or 5432
    try:
        async with Freezer(port) as freezer:
            settings = load_settings(
                data_dir=tmp_path,
                upstream_urls={"credit": credit_url},
                redis_url=REDIS_URL,
                database_url=database_url.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{freezer.port}/"),
                audit_commit_deadline=DEADLINE,
            )
            async with running_gateway(settings) as gw:
                assert [(await call_for_purpose(gw, PURPOSE)).status_code for _ in range(3)] == [200] * 3
                freezer.freeze()
                started = time.monotonic()
                given_up = await call_for_purpose(gw, PURPOSE)
                assert_problem(given_up, 503, "audit_unavailable")
                assert time.monotonic() - started < DEADLINE + 5
                answered = [(await call_for_purpose(gw, PURPOSE)).status_code for _ in range(5)]
                assert answered == [200] * 5, "the next batches commit on a new connection"
                freezer.thaw()
                async with gw.client(gw.officer) as officer:
                    verified = await officer.get("/v1/audit/verify")
                assert verified.status_code == 200 and verified.json()["ok"] is True, verified.text
    finally:
        await drop_database(database_url)
