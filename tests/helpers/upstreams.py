"""Shared by the golden-tax, market and resilience tests: simulators on real sockets, their fault control, and a
gateway (SQLite, and PostgreSQL + Redis) configured with every built-in upstream and granted all its operations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.gateways import PURPOSE, RunningGateway, grant_every_operation, make_gateway

__all__ = ["PURPOSE", "Simulator", "grant_all", "started_simulator", "upstream_gateway"]


class Simulator:
    """A running simulator and its /_sim/ control routes."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def fault(self, **plan: Any) -> None:
        async with self.session.post(self.url + "/_sim/faults", json=plan) as response:
            assert response.status == 200, await response.text()

    async def clear(self) -> None:
        async with self.session.delete(self.url + "/_sim/faults") as response:
            assert response.status == 200

    async def served(self) -> int:
        async with self.session.get(self.url + "/_sim/stats") as response:
            return int((await response.json())["requests"])


async def started_simulator(module: Any) -> AsyncIterator[Simulator]:
    runner, port = await module.start_with_port("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        simulator = Simulator(f"http://127.0.0.1:{port}", session)
        try:
            yield simulator
        finally:
            await simulator.clear()
    await runner.cleanup()


async def grant_all(gw: RunningGateway, *services: str) -> None:
    """Grant the platform every operation of these services, all fields, under PURPOSE."""
    async with gw.runtime.sessions() as session:
        await grant_every_operation(session, gw.runtime.adapters, services)
    gw.runtime.directory.invalidate()


async def upstream_gateway(
    backend: str, tmp_path: Path, urls: dict[str, str], policies: dict[str, Any] | None = None
) -> AsyncIterator[RunningGateway]:
    async with make_gateway(
        backend, data_dir=tmp_path, upstream_urls=urls, upstream_timeout=0.5, upstream_policies=policies or {}
    ) as running:
        yield running


backends = pytest.mark.parametrize("backend", ["sqlite", "postgres_redis"])
