"""Shared fixtures: real PostgreSQL and Redis (skipped, or failed under CI), simulators and gateways on real sockets."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis

from gateway.access import callers as registry
from gateway.app import create_app
from gateway.client import SignatureAuth
from gateway.demo.setup import key_id_for
from gateway.runtime import build_adapters
from gateway.settings import Settings, load_settings
from gateway.storage import db
from schemas.api import CallerIn, GrantIn, KeyIn
from security.keys import public_key_pem
from simulators import credit as credit_simulator

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PURPOSE = "XM-2025-001"


def _missing(service: str, reason: str) -> None:
    message = f"{service} is not reachable ({reason}); set {service.upper()}_URL or start it"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}. CI=true/REQUIRE_SERVICES=1: integration tests must run, not skip.")
    pytest.skip(message)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(_plain(url))._replace(path=f"/{name}"))


_template: dict[str, str] = {}


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(_plain(DATABASE_URL), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _missing("database", type(exc).__name__)
        raise


async def postgres_template() -> str:
    """A migrated template database on the real server, made once per test session; each test clones it."""
    if "name" not in _template:
        name = f"msjx_tpl_{secrets.token_hex(4)}"
        admin = await _admin()
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        await db.upgrade_async(load_settings(database_url=_with_database(DATABASE_URL, name)))
        _template["name"] = name
    return _template["name"]


async def create_test_database() -> str:
    """A throwaway database for one test, cloned from the migrated template."""
    template = await postgres_template()
    name = f"msjx_t_{secrets.token_hex(4)}"
    admin = await _admin()
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    await admin.close()
    return _with_database(DATABASE_URL, name)


async def drop_database(url: str) -> None:
    admin = await _admin()
    await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session", autouse=True)
def _drop_template() -> Iterator[None]:
    yield
    if "name" in _template:
        asyncio.run(drop_database(_with_database(DATABASE_URL, _template["name"])))


async def check_redis() -> str:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # any connection failure means the server is not there
        _missing("redis", type(exc).__name__)
    finally:
        await client.aclose()
    return REDIS_URL


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Identity:
    caller_id: str
    key_id: str
    private_key: Ed25519PrivateKey

    def auth(self) -> SignatureAuth:
        return SignatureAuth(self.key_id, self.private_key)


@dataclass
class RunningGateway:
    url: str
    settings: Settings
    app: Any
    platform: Identity
    admin: Identity
    officer: Identity
    grant_id: str
    narrow_grant_id: str

    def client(self, identity: Identity | None = None, **options: Any) -> httpx.AsyncClient:
        auth = (identity or self.platform).auth()
        return httpx.AsyncClient(base_url=self.url, auth=auth, timeout=30, **options)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


async def _identity(session: Any, caller_id: str, roles: list[str], department: str) -> Identity:
    key = Ed25519PrivateKey.generate()
    key_id = key_id_for(caller_id, key.public_key())
    body = CallerIn(
        caller_id=caller_id,
        name=caller_id,
        department=department,
        roles=roles,
        keys=[KeyIn(key_id=key_id, public_key=public_key_pem(key.public_key()))],
    )
    await registry.add_caller(session, body)
    return Identity(caller_id, key_id, key)


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    """Migrate, seed one caller of each role with grants, and serve over a real socket in this event loop."""
    await db.upgrade_async(settings)
    adapters = build_adapters(settings)
    engine = db.create_engine(settings)
    async with db.sessionmaker(engine)() as session:
        platform = await _identity(session, "platform", ["platform"], "市数据管理局")
        admin = await _identity(session, "admin", ["admin"], "市大数据中心")
        officer = await _identity(session, "officer", ["officer"], "市网信办")
        valid_to = datetime.now(UTC) + timedelta(days=30)
        operation = adapters["credit"].operations["dishonest-debtor"]
        grant = await registry.add_grant(
            session,
            GrantIn(
                caller_id="platform",
                service="credit",
                operation="dishonest-debtor",
                purpose=PURPOSE,
                fields=list(operation.fields),
                valid_to=valid_to,
            ),
            adapters,
        )
        narrow = await registry.add_grant(
            session,
            GrantIn(
                caller_id="platform",
                service="credit",
                operation="dishonest-debtor",
                purpose="QZ-2025-007",
                fields=["listed"],
                valid_to=valid_to,
            ),
            adapters,
        )
    await engine.dispose()
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield RunningGateway(
            f"http://127.0.0.1:{port}", settings, app, platform, admin, officer, grant.grant_id, narrow.grant_id
        )
    finally:
        server.should_exit = True
        await task


BackendFactory = Callable[[Path], Settings]


@asynccontextmanager
async def gateway_on(backend: str, **overrides: Any) -> AsyncIterator[RunningGateway]:
    """A running gateway with these settings, on SQLite with in-process state or on a throwaway PostgreSQL
    database + Redis (`backend` "postgres_redis"), dropped afterwards."""
    if backend == "postgres_redis":
        overrides["redis_url"] = await check_redis()
        overrides["database_url"] = await create_test_database()
    settings = load_settings(**overrides)
    try:
        async with running_gateway(settings) as running:
            yield running
    finally:
        if settings.database_url:
            await drop_database(settings.database_url)


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path, credit_url: str) -> AsyncIterator[RunningGateway]:
    """The gateway on each backend: SQLite with in-process state, and PostgreSQL + Redis."""
    async with gateway_on(
        request.param, data_dir=tmp_path, upstream_urls={"credit": credit_url}, upstream_timeout=1.0
    ) as running:
        yield running
