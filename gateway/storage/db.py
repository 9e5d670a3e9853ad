"""Database engine and migrations: one async engine per process; Alembic brings the schema up to date."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from gateway.settings import Settings
from gateway.storage.connection_room import POOL_OVERFLOW, POOL_SIZE, Need
from gateway.storage.durability import DURABLE_SESSION
from gateway.storage.reachability import check_database, check_sqlite, prepare_data_dir

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.async_database_url
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_pre_ping=True)
    event.listen(engine.sync_engine, "connect", _durable_session)
    return engine


# WAL lets readers run beside the audit writer; FULL makes every commit survive a power cut, which group commit
# keeps affordable. The audit writer's own connection (gateway/audit/writer.py) takes the same ones.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
)


def apply_sqlite_pragmas(dbapi_connection: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    apply_sqlite_pragmas(dbapi_connection)


def _durable_session(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(DURABLE_SESSION)
    cursor.close()


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = settings.async_database_url
    return config


def upgrade(settings: Settings, revision: str = "head", need: Need | None = None) -> None:
    """Migrate the database to `revision`. Runs its own event loop: call it before the server's starts. With `need`
    (a node about to serve), PostgreSQL must also leave room for the connections it opens."""
    # An unusable path or an unreachable server is one line naming the setting (StartupFailure), not a traceback.
    prepare_data_dir(settings)
    if settings.is_sqlite:
        check_sqlite(settings)
    else:
        asyncio.run(check_database(settings, need))
    command.upgrade(alembic_config(settings), revision)


async def upgrade_async(settings: Settings, revision: str = "head", need: Need | None = None) -> None:
    await asyncio.to_thread(upgrade, settings, revision, need)
