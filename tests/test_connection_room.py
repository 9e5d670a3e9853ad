"""A node checks, before its workers start, that PostgreSQL and Redis let it open the connections it needs
(gateway/storage/connection_room.py): below what it needs to start it refuses in one line (a database CONNECTION
LIMIT of 2 hung `serve` for 30 s and ended in a 106-line traceback), below what it opens under load it warns (at
5, an audit checkpoint failed under load with "too many connections"; with Redis's maxclients at 8, a burst of 60
calls was answered 503 but for a few). A Redis pool capped below maxclients (MSJX_REDIS_MAX_CONNECTIONS) makes
commands wait for a connection instead."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import procrastinate.exceptions
import psycopg
import pytest
from redis.asyncio import Redis

from gateway.batches.queue import _OutageAsWarning
from gateway.settings import load_settings
from gateway.storage.connection_room import Limit, Need, limits
from gateway.storage.reachability import StorageUnusable, check_database, check_redis
from tests.helpers.faults import OwnRedis
from tests.helpers.gateways import PURPOSE, running_gateway
from tests.helpers.quotas import call_for_purpose
from tests.helpers.services import DATABASE_URL, admin_connection, create_test_database, drop_database, with_database
from tests.test_database_unusable import _as, _cli

pytestmark = pytest.mark.slow


@pytest.fixture
async def limited() -> AsyncIterator[tuple[str, str, Any]]:
    """A migrated database owned by a role that is no superuser (a superuser passes CONNECTION LIMIT), as
    (its URL, its name, an admin connection to set the limit with)."""
    suffix = secrets.token_hex(4)
    database, role = f"msjx_room_{suffix}", f"msjx_room_{suffix}"
    admin = await admin_connection()
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"CREATE DATABASE {database} OWNER {role}")
        yield _as(with_database(DATABASE_URL, database), role), database, admin
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_a_limit_below_what_a_node_needs_to_start_is_refused_in_one_line(
    tmp_path: Path, limited: tuple[str, str, Any]
) -> None:
    url, database, admin = limited
    assert _cli(tmp_path, url, "db", "upgrade").returncode == 0
    await admin.execute(f"ALTER DATABASE {database} CONNECTION LIMIT 4")
    served = _cli(tmp_path, url, "serve", "--port", "0")
    assert served.returncode == 2, served.stderr
    assert served.stderr.strip().splitlines() == [
        f"error: MSJX_DATABASE_URL: PostgreSQL at 127.0.0.1:5432 has room for 4 more connections of the role"
        f" {database} to the database {database} (CONNECTION LIMIT of the database {database}: 4, 0 in use); this"
        " node needs 5 to start and opens up to 24 (20 pool + 1 audit writer + 3 batch queue); raise the limit, or"
        " run fewer workers or batch slots (MSJX_BATCH_WORKERS)"
    ]


async def test_a_limit_below_what_a_node_opens_under_load_is_said(
    tmp_path: Path, limited: tuple[str, str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    url, database, admin = limited
    await admin.execute(f"ALTER ROLE {database} CONNECTION LIMIT 60")  # the role's, and the tighter of the two
    await admin.execute(f"ALTER DATABASE {database} CONNECTION LIMIT 70")
    settings = load_settings(data_dir=tmp_path, database_url=url)
    with caplog.at_level(logging.WARNING, "msjx.storage"):
        await check_database(settings, Need(1, batch_workers=1))
        assert caplog.messages == []
        await check_database(settings, Need(3, batch_workers=1))  # 3 × 24 = 72
    assert caplog.messages == [
        f"PostgreSQL at 127.0.0.1:5432 allows the role {database} 60 connections to the database {database}"
        f" (CONNECTION LIMIT of the role {database}); this node opens up to 72 under load (3 × (20 pool + 1 audit"
        " writer + 3 batch queue)), and what finds no connection fails (an audit checkpoint, a batch chunk, a call"
        " with 503): raise the limit to the sum over all nodes (docs/deploy.md)"
    ]


def test_a_superuser_is_held_by_max_connections_alone() -> None:
    row = {
        "role": "postgres",
        "database": "gw",
        "superuser": True,
        "database_limit": 3,
        "role_limit": 3,
        "max_connections": 100,
        "reserved": 3,
        "on_database": 1,
        "of_role": 7,
        "on_server": 9,
    }
    assert limits(row) == [Limit("max_connections", 100, 9)]
    assert limits({**row, "superuser": False}) == [
        Limit("CONNECTION LIMIT of the database gw", 3, 1),
        Limit("CONNECTION LIMIT of the role postgres", 3, 7),
        Limit("max_connections less the reserved ones", 97, 9),
    ]


async def test_the_batch_queue_says_why_it_lost_its_connection(limited: tuple[str, str, Any]) -> None:
    url, database, admin = limited
    await admin.execute(f"ALTER DATABASE {database} CONNECTION LIMIT 0")
    try:
        await psycopg.AsyncConnection.connect(url)
    except psycopg.OperationalError as exc:
        refused = exc
    try:
        raise procrastinate.exceptions.ConnectorException() from refused  # as procrastinate's connector wraps it
    except procrastinate.exceptions.ConnectorException:
        record = logging.LogRecord("procrastinate.worker", logging.ERROR, __file__, 1, "lost", (), sys.exc_info())
    _OutageAsWarning((procrastinate.exceptions.ConnectorException,)).filter(record)
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert record.getMessage() == (
        'batch queue: ConnectorException: connection failed: connection to server at "127.0.0.1", port 5432 failed:'
        f' FATAL:  too many connections for database "{database}" (it reconnects by itself)'
    )


async def test_redis_with_too_few_clients_left_is_refused_and_too_few_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = OwnRedis(tmp_path, "--maxclients", "64")
    redis.start()
    others = [Redis.from_url(redis.url, single_connection_client=True) for _ in range(63)]
    try:
        for other in others:  # another application's clients: one is left, for the check
            await other.ping()
        with pytest.raises(StorageUnusable) as refused:
            await check_redis(load_settings(data_dir=tmp_path, redis_url=redis.url), workers=3)
        with caplog.at_level(logging.WARNING, "msjx.storage"):
            await check_redis(load_settings(data_dir=tmp_path, redis_url=redis.url, redis_max_connections=32))
            assert caplog.messages == []
            await check_redis(load_settings(data_dir=tmp_path, redis_url=redis.url))
    finally:
        for other in others:
            await other.aclose()
        redis.stop()
    assert str(refused.value).startswith(
        f"MSJX_REDIS_URL: Redis at 127.0.0.1:{redis.port} has room for 1 more clients (maxclients 64, 63 connected);"
        " this node needs 3 to start and opens up to 384 (3 workers × MSJX_REDIS_MAX_CONNECTIONS 128)"
    )
    assert caplog.messages == [
        f"Redis at 127.0.0.1:{redis.port} takes at most 64 clients (maxclients); this node opens up to 128"
        " (MSJX_REDIS_MAX_CONNECTIONS 128), and a command that finds none fails with 503: set"
        " MSJX_REDIS_MAX_CONNECTIONS so that all nodes' workers together stay below maxclients (commands then wait"
        " for a connection of their pool), or raise maxclients"
    ]


async def test_a_redis_pool_capped_below_maxclients_makes_a_burst_wait(tmp_path: Path, credit_url: str) -> None:
    redis = OwnRedis(tmp_path, "--maxclients", "4")
    redis.start()
    database_url = await create_test_database()
    try:
        settings = load_settings(
            data_dir=tmp_path,
            upstream_urls={"credit": credit_url},
            redis_url=redis.url,
            database_url=database_url,
            redis_max_connections=2,
        )
        async with running_gateway(settings) as gw:
            for _ in range(3):
                burst = await asyncio.gather(*[call_for_purpose(gw, PURPOSE) for _ in range(60)])
                assert Counter(answer.status_code for answer in burst) == {200: 60}
            looker = Redis.from_url(redis.url)
            try:
                assert int((await looker.info("clients"))["connected_clients"]) <= 3  # the pool's 2 and this one
            finally:
                await looker.aclose()
    finally:
        await drop_database(database_url)
        redis.stop()
