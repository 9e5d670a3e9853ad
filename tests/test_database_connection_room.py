"""A node checks, before its workers start, that PostgreSQL lets it open the connections it needs
(gateway/storage/connection_room.py): below what it needs to start it refuses in one line (a database CONNECTION
LIMIT of 2 hung `serve` for 30 s and ended in a 106-line traceback), below what it opens under load it warns (at
5, an audit checkpoint failed under load with "too many connections")."""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import procrastinate.exceptions
import psycopg
import pytest

from gateway.batches.queue import _OutageAsWarning
from gateway.settings import load_settings
from gateway.storage.connection_room import Limit, Need, limits
from gateway.storage.reachability import check_database
from tests.helpers.services import DATABASE_URL, admin_connection, with_database
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
        await check_database(settings, Need(1, 3))
        assert caplog.messages == []
        await check_database(settings, Need(3, 3))  # 3 × 24 = 72
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
