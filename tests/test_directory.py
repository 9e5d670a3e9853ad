"""The directory snapshot: one reload at a time, off the request path, and never served older than 1 s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.access import callers
from gateway.access.directory import REVOCATION_BOUND, STALE_GRACE, Directory, _Snapshot
from gateway.demo.setup import key_id_for
from gateway.settings import Settings, load_settings
from gateway.storage import db
from schemas.api import CallerIn, KeyIn
from security.keys import public_key_pem


class GatedDirectory(Directory):
    """The real directory, reading the real database, whose reloads wait at a gate so a test can hold one in flight."""

    def __init__(self, sessions: async_sessionmaker, ttl: float) -> None:
        super().__init__(sessions, ttl=ttl)
        self.gate = asyncio.Event()
        self.gate.set()
        self.loads = 0

    async def _load(self) -> _Snapshot:
        self.loads += 1
        await self.gate.wait()
        return await super()._load()


async def _add_caller(sessions: async_sessionmaker, caller_id: str) -> str:
    key = Ed25519PrivateKey.generate()
    key_id = key_id_for(caller_id, key.public_key())
    body = CallerIn(
        caller_id=caller_id,
        name=caller_id,
        department="市数据管理局",
        roles=["platform"],
        keys=[KeyIn(key_id=key_id, public_key=public_key_pem(key.public_key()))],
    )
    async with sessions() as session:
        await callers.add_caller(session, body)
    return key_id


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


def test_the_default_ttl_and_grace_stay_within_the_revocation_bound() -> None:
    settings = Settings()
    assert settings.grant_cache_seconds + STALE_GRACE <= REVOCATION_BOUND == 1.0


async def test_concurrent_callers_do_not_wait_for_a_reload_in_flight(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    await db.upgrade_async(settings)
    engine = db.create_engine(settings)
    sessions = db.sessionmaker(engine)
    try:
        first = await _add_caller(sessions, "first")
        directory = GatedDirectory(sessions, ttl=0.5)  # stale snapshots served up to 0.7 s old
        assert await directory.key(first) is not None and directory.loads == 1
        snapshot = directory._snapshot
        assert snapshot is not None
        second = await _add_caller(sessions, "second")  # what the next reload must bring

        await _sleep_until(snapshot.loaded + 0.52)  # past the ttl, within ttl + grace
        directory.gate.clear()  # the reload the first of these callers starts cannot finish
        found = await asyncio.wait_for(asyncio.gather(*[directory.key(second) for _ in range(20)]), timeout=0.1)
        assert found == [None] * 20, "every caller got the old snapshot at once"
        assert directory.loads == 2, "and one reload was started for all of them"

        await _sleep_until(snapshot.loaded + 0.72)  # past ttl + grace: the old snapshot may no longer be served
        late = asyncio.create_task(directory.key(second))
        await asyncio.sleep(0.05)
        assert not late.done(), "a caller waits for the reload rather than use a snapshot past ttl + grace"
        assert directory.loads == 2, "the reload already in flight, not a second one"
        directory.gate.set()
        assert (await asyncio.wait_for(late, timeout=5)) is not None, "the reload saw the new caller"
        assert await directory.key(second) is not None and directory.loads == 2

        third = await _add_caller(sessions, "third")
        directory.invalidate()  # what the node that made a change does: the next caller waits for a fresh snapshot
        assert await directory.key(third) is not None and directory.loads == 3
    finally:
        await engine.dispose()
