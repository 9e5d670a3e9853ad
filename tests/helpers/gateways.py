"""Gateways on real sockets for tests: migrated, seeded with one caller of each role and their grants."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.access import callers
from gateway.access import grants as grant_rows
from gateway.app import create_app
from gateway.client import SignatureAuth
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.demo.setup import key_id_for
from gateway.runtime import build_adapters
from gateway.settings import Settings, load_settings
from gateway.storage import db
from schemas.api import CallerIn, GrantIn, KeyIn
from security.keys import public_key_pem
from tests.helpers.services import (
    check_redis,
    create_test_database,
    drop_database,
    free_port,
)
from tests.helpers.serving import served

PURPOSE = "XM-2025-001"


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


async def new_identity(session: Any, caller_id: str, roles: list[str], department: str) -> Identity:
    key = Ed25519PrivateKey.generate()
    key_id = key_id_for(caller_id, key.public_key())
    body = CallerIn(
        caller_id=caller_id,
        name=caller_id,
        department=department,
        roles=roles,
        keys=[KeyIn(key_id=key_id, public_key=public_key_pem(key.public_key()))],
    )
    await callers.add_caller(session, body)
    return Identity(caller_id, key_id, key)


@asynccontextmanager
async def running_gateway(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[RunningGateway]:
    """Migrate, seed one caller of each role with grants, and serve over a real socket in this event loop; `clock`
    is the gateway's wall time (a ManualClock lets a test move it)."""
    await db.upgrade_async(settings)
    adapters = build_adapters(settings)
    engine = db.create_engine(settings)
    async with db.sessionmaker(engine)() as session:
        platform = await new_identity(session, "platform", ["platform"], "市数据管理局")
        admin = await new_identity(session, "admin", ["admin"], "市大数据中心")
        officer = await new_identity(session, "officer", ["officer"], "市网信办")
        valid_to = datetime.now(UTC) + timedelta(days=30)
        operation = adapters["credit"].operations["dishonest-debtor"]
        grant = await grant_rows.add_grant(
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
        narrow = await grant_rows.add_grant(
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
    app = create_app(settings, clock=clock)
    port = free_port()
    async with served(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")):
        yield RunningGateway(
            f"http://127.0.0.1:{port}", settings, app, platform, admin, officer, grant.grant_id, narrow.grant_id
        )


BackendFactory = Callable[[Path], Settings]


@asynccontextmanager
async def make_gateway(backend: str, *, clock: Clock = SYSTEM_CLOCK, **overrides: Any) -> AsyncIterator[RunningGateway]:
    """A running gateway with these settings, on SQLite with in-process state or on a throwaway PostgreSQL
    database + Redis (`backend` "postgres_redis"), dropped afterwards."""
    if backend == "postgres_redis":
        overrides["redis_url"] = await check_redis()
        # Tests run side by side (pytest-xdist) on one Redis: a node's start-up releases the idempotency locks its
        # node id held under its prefix, so each gateway keeps its own keys.
        overrides.setdefault("redis_prefix", f"msjx-test-{secrets.token_hex(4)}")
        overrides["database_url"] = await create_test_database()
    settings = load_settings(**overrides)
    try:
        async with running_gateway(settings, clock) as running:
            yield running
    finally:
        if settings.database_url:
            await drop_database(settings.database_url)


async def grant_every_operation(
    session: Any,
    adapters: dict[str, Any],
    services: Iterable[str],
    *,
    purpose: str = PURPOSE,
    skip: Collection[tuple[str, str]] = (),
) -> None:
    """Grant the platform every operation of these services with all their fields, for a day, under `purpose`."""
    for service in services:
        for operation in adapters[service].operations.values():
            if (service, operation.name) in skip:
                continue
            grant = GrantIn(
                caller_id="platform",
                service=service,
                operation=operation.name,
                purpose=purpose,
                fields=list(operation.fields),
                valid_to=datetime.now(UTC) + timedelta(days=1),
            )
            await grant_rows.add_grant(session, grant, adapters)
