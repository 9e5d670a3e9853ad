"""A gateway seeded like `serve --demo` (callers, sharing requests in every state, one console account per role)
for the web console's tests, with the console's clock in the test's hand, and sign-in helpers."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyotp
import uvicorn
from sqlalchemy import select

from gateway.app import create_app
from gateway.audit.rows import AUDIT_TABLE
from gateway.client import SignatureAuth
from gateway.demo.setup import seed
from gateway.runtime import build_adapters
from gateway.settings import Settings, load_settings
from gateway.storage import db
from security.keys import load_private_key_file
from tests.helpers.services import free_port
from tests.helpers.serving import served

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Clock:
    """The console's clock: real time plus an offset the test moves forward (idle expiry, fresh TOTP steps)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


@dataclass
class ConsoleWorld:
    url: str
    app: Any
    settings: Settings
    accounts: dict[str, dict[str, Any]]
    callers: dict[str, dict[str, Any]]
    clock: Clock

    def code(self, username: str, secret: str | None = None) -> str:
        """A TOTP code the console accepts now: each call first moves the clock one step on, since a code is
        accepted once per account and step."""
        self.clock.advance(seconds=30)
        totp = pyotp.TOTP(secret or self.accounts[username]["totp_secret"])
        return totp.at(self.clock())

    def platform_auth(self) -> SignatureAuth:
        entry = self.callers["platform"]
        return SignatureAuth(entry["key_id"], load_private_key_file(Path(entry["key_file"])))

    async def records(self, **where: Any) -> list[dict[str, Any]]:
        """Audit records matching column == value, oldest first."""
        query = select(AUDIT_TABLE)
        for name, value in where.items():
            query = query.where(AUDIT_TABLE.c[name] == value)
        async with self.app.state.runtime.engine.connect() as connection:
            rows = await connection.execute(query.order_by(AUDIT_TABLE.c.ts_ms, AUDIT_TABLE.c.height))
            return [dict(row._mapping) for row in rows]


@asynccontextmanager
async def console_world(data_dir: Path, credit_url: str, **overrides: Any) -> AsyncIterator[ConsoleWorld]:
    """The demo's data on SQLite, served on a real socket in this event loop."""
    overrides.setdefault("console_secure_cookies", False)  # plain HTTP: httpx keeps Secure cookies for https
    settings = load_settings(data_dir=data_dir, upstream_urls={"credit": credit_url}, **overrides)
    await db.upgrade_async(settings)
    listing = await seed(settings, build_adapters(settings))
    accounts = {
        entry["username"]: entry for entry in json.loads((data_dir / "demo" / "console-accounts.json").read_text())
    }
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on")
    async with served(config) as server:
        clock = Clock()
        app.state.console.clock = clock
        port = server.servers[0].sockets[0].getsockname()[1]
        yield ConsoleWorld(
            f"http://127.0.0.1:{port}",
            app,
            settings,
            accounts,
            {entry["caller_id"]: entry for entry in listing},  # type: ignore[misc]
            clock,
        )


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match is not None, "the page has no CSRF token"
    return match.group(1)


@asynccontextmanager
async def signed_in(world: ConsoleWorld, username: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client signed in to the console as `username`."""
    async with httpx.AsyncClient(base_url=world.url, follow_redirects=False, timeout=30) as client:
        await _sign_in(world, client, username)
        yield client


async def _sign_in(world: ConsoleWorld, client: httpx.AsyncClient, username: str) -> None:
    page = await client.get("/console/login")
    response = await client.post(
        "/console/login",
        data={
            "csrf_token": csrf_of(page.text),
            "username": username,
            "password": world.accounts[username]["password"],
            "totp": world.code(username),
        },
    )
    assert response.status_code == 303, response.text
