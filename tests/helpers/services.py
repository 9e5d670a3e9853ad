"""The real PostgreSQL and Redis of the tests: reached, or skipped with the reason (failed under CI); throwaway DBs."""

from __future__ import annotations

import os
import secrets
import socket
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from gateway.settings import load_settings
from gateway.storage import db

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"


DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def missing(service: str, reason: str) -> None:
    message = f"{service} is not reachable ({reason}); set {service.upper()}_URL or start it"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}. CI=true/REQUIRE_SERVICES=1: integration tests must run, not skip.")
    pytest.skip(message)


def plain_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(plain_url(url))._replace(path=f"/{name}"))


_template: dict[str, str] = {}


async def admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(plain_url(DATABASE_URL), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        missing("database", type(exc).__name__)
        raise


async def postgres_template() -> str:
    """A migrated template database on the real server, made once per test session; each test clones it."""
    if "name" not in _template:
        name = f"msjx_tpl_{secrets.token_hex(4)}"
        admin = await admin_connection()
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        await db.upgrade_async(load_settings(database_url=with_database(DATABASE_URL, name)))
        _template["name"] = name
    return _template["name"]


async def create_test_database() -> str:
    """A throwaway database for one test, cloned from the migrated template."""
    template = await postgres_template()
    name = f"msjx_t_{secrets.token_hex(4)}"
    admin = await admin_connection()
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    await admin.close()
    return with_database(DATABASE_URL, name)


async def drop_database(url: str) -> None:
    admin = await admin_connection()
    await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    await admin.close()


async def check_redis() -> str:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # any connection failure means the server is not there
        missing("redis", type(exc).__name__)
    finally:
        await client.aclose()
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
