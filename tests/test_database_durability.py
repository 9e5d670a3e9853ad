"""A database whose default is synchronous_commit = off (a DBA's speed-up) would let PostgreSQL acknowledge an audit
record or a payment before it is on disk: every connection of the gateway sets it on for itself, and the start-up
check says what it found (gateway/storage/durability.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.audit.committer import PostgresCommitter
from gateway.audit.sealing import RowSealer
from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.durability import say_clock_skew
from gateway.storage.reachability import check_database
from tests.helpers.services import create_test_database, drop_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def lax_database() -> AsyncIterator[str]:
    url = await create_test_database()
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{make_url(url).database}" SET synchronous_commit = off')
    finally:
        await admin.close()
    try:
        yield url
    finally:
        await drop_database(url)


async def test_every_gateway_connection_commits_synchronously(
    lax_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = make_url(lax_database).set(drivername="postgresql").render_as_string(hide_password=False)
    plain = await asyncpg.connect(dsn)
    try:
        assert await plain.fetchval("SHOW synchronous_commit") == "off", "the database's default, as a DBA set it"
    finally:
        await plain.close()

    settings = load_settings(database_url=lax_database)
    engine = db.create_engine(settings)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SHOW synchronous_commit"))).scalar() == "on"
    finally:
        await engine.dispose()

    committer = PostgresCommitter(dsn, "t", ["x"], "", RowSealer("standard", "chain", {}, ("record_id",)))
    await committer.open()
    try:
        assert committer._connection is not None
        assert await committer._connection.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await committer.close()

    caplog.set_level(logging.WARNING, "msjx.storage")
    await check_database(settings)
    assert any(
        "has synchronous_commit = off; the gateway sets it on for its own connections" in message
        for message in caplog.messages
    ), caplog.messages


async def test_a_host_clock_far_from_the_database_is_said(caplog: pytest.LogCaptureFixture) -> None:
    import time

    url = await create_test_database()
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    caplog.set_level(logging.ERROR, "msjx.storage")
    try:
        assert abs(await say_clock_skew(connection, "db.example:5432")) < 1.0, "this machine's two clocks agree"
        assert not caplog.messages
        skew = await say_clock_skew(connection, "db.example:5432", clock=lambda: time.time() + 37)
    finally:
        await connection.close()
        await drop_database(url)
    assert 36 < skew < 38
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("this host's clock is 37.0 s ahead of PostgreSQL's at db.example:5432")
