"""Shared fixtures: real PostgreSQL and Redis (skipped, or failed under CI), simulators and gateways on real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from simulators import credit as credit_simulator
from tests.helpers.demo import demo  # noqa: F401 - fixtures shared by several modules
from tests.helpers.deployment import treasury_process  # noqa: F401
from tests.helpers.gateways import RunningGateway, make_gateway
from tests.helpers.nginx import nginx_binary  # noqa: F401
from tests.helpers.payments import pay  # noqa: F401
from tests.helpers.services import (
    DATABASE_URL,
    _template,
    create_test_database,
    drop_database,
    with_database,
)
from tests.helpers.sharing_world import World, sharing_world


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first, each file's tests in their own order: pytest-xdist hands out whole files in this
    order (scripts/run-tests.sh), so a long file does not start last and keep one worker busy while the other idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session", autouse=True)
def _drop_template() -> Iterator[None]:
    yield
    if "name" in _template:
        asyncio.run(drop_database(with_database(DATABASE_URL, _template["name"])))


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    url = await create_test_database()
    yield url
    await drop_database(url)


@pytest.fixture(scope="session")
async def credit_url() -> AsyncIterator[str]:
    runner, port = await credit_simulator.start_with_port("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def clear_faults(credit_url: str) -> AsyncIterator[None]:
    yield
    async with httpx.AsyncClient() as client:
        await client.delete(f"{credit_url}/_sim/faults")


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path, credit_url: str) -> AsyncIterator[RunningGateway]:
    """The gateway on each backend: SQLite with in-process state, and PostgreSQL + Redis."""
    async with make_gateway(
        request.param, data_dir=tmp_path, upstream_urls={"credit": credit_url}, upstream_timeout=1.0
    ) as running:
        yield running


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def world(request: pytest.FixtureRequest, tmp_path: Path, credit_url: str) -> AsyncIterator[World]:
    """The sharing workflow's departments and officers on a gateway, on each backend."""
    async with sharing_world(request.param, tmp_path, credit_url) as running:
        yield running
