"""UTCDateTime: a moment goes in with any offset (or none, meaning UTC) and comes back as the same moment, aware and in
UTC, on SQLite (which keeps no offset) and on PostgreSQL; comparisons in SQL see the same moments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.models import Caller
from tests.helpers.services import create_test_database, drop_database

BEIJING = timezone(timedelta(hours=8))
MOMENT = datetime(2026, 1, 1, 8, 30, 15, 123456, tzinfo=BEIJING)  # 00:30:15 UTC


@pytest.fixture(params=["sqlite", "postgres"])
async def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[async_sessionmaker]:
    database_url = await create_test_database() if request.param == "postgres" else None
    settings = load_settings(data_dir=tmp_path, database_url=database_url)
    await db.upgrade_async(settings)
    engine = db.create_engine(settings)
    try:
        yield db.sessionmaker(engine)
    finally:
        await engine.dispose()
        if database_url:
            await drop_database(database_url)


async def test_a_moment_comes_back_the_same_aware_and_in_utc(sessions: async_sessionmaker) -> None:
    naive_utc = datetime(2026, 1, 1, 0, 30, 16)
    async with sessions() as session, session.begin():
        session.add(Caller(caller_id="beijing", name="b", department="d", roles=[], created_at=MOMENT))
        session.add(Caller(caller_id="naive", name="n", department="d", roles=[], created_at=naive_utc))
    async with sessions() as session:
        beijing = await session.get(Caller, "beijing")
        naive = await session.get(Caller, "naive")
        assert beijing is not None and naive is not None
        assert beijing.created_at == MOMENT and beijing.created_at.tzinfo is UTC
        assert beijing.created_at.isoformat() == "2026-01-01T00:30:15.123456+00:00"
        assert naive.created_at == naive_utc.replace(tzinfo=UTC) and naive.created_at.tzinfo is UTC
        # In SQL: a bound Beijing time compares with the stored UTC ones as the same moment.
        earlier = (await session.scalars(select(Caller.caller_id).where(Caller.created_at <= MOMENT))).all()
        assert earlier == ["beijing"]
