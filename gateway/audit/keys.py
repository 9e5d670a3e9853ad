"""The key ring's storage in the database, and opening the ring the way every node and CLI command does."""

from __future__ import annotations

import logging
import os

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.settings import Settings
from gateway.storage.models import AuditKey
from security.keyring import (
    INDEX_KEY_ID,
    INDEX_KEY_SIZE,
    KeyRing,
    StoredKey,
    load_master_key,
    read_legacy_key,
    remove_file,
)

log = logging.getLogger("msjx.keys")
KEYS_TABLE = AuditKey.__table__
# Key files of the first release, imported into the ring once so records sealed with them stay readable.
LEGACY_DATA_KEY = ("audit-data-dk-1.key", "dk-1")
LEGACY_INDEX_KEY = "subject-hmac.key"


class DbKeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self) -> list[StoredKey]:
        async with self._engine.connect() as connection:
            result = await connection.execute(select(KEYS_TABLE))
            return [
                StoredKey(
                    key_id=row.key_id,
                    kind=row.kind,
                    suite=row.suite,
                    created_ms=int(row.created_ms),
                    master_key_id=row.master_key_id,
                    wrapped=bytes(row.wrapped) if row.wrapped is not None else None,
                    destroyed_ms=int(row.destroyed_ms) if row.destroyed_ms is not None else None,
                )
                for row in result
            ]

    async def insert(self, key: StoredKey) -> bool:
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    insert(KEYS_TABLE).values(
                        key_id=key.key_id,
                        kind=key.kind,
                        suite=key.suite,
                        created_ms=key.created_ms,
                        master_key_id=key.master_key_id,
                        wrapped=key.wrapped,
                        destroyed_ms=key.destroyed_ms,
                    )
                )
        except IntegrityError:
            return False  # another node wrote the same key id first; its row wins
        return True

    async def destroy(self, key_ids: list[str], when_ms: int) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(KEYS_TABLE)
                .where(KEYS_TABLE.c.key_id.in_(key_ids), KEYS_TABLE.c.kind == "data")
                .values(wrapped=None, destroyed_ms=when_ms)
            )


async def open_keyring(settings: Settings, engine: AsyncEngine, clock: Clock = SYSTEM_CLOCK) -> KeyRing:
    """Load the master key, open the ring over the database, importing first-release key files once."""
    master = load_master_key(
        env_value=settings.master_key.get_secret_value() if settings.master_key else None,
        secret_file=settings.master_key_file,
        default_path=settings.keys_dir / "master.key",
    )
    ring = KeyRing(
        master,
        DbKeyStore(engine),
        suite=settings.crypto_suite,
        period_days=settings.audit_key_period_days,
        clock=clock.ms,
    )
    imports = []
    data_path = settings.keys_dir / LEGACY_DATA_KEY[0]
    index_path = settings.keys_dir / LEGACY_INDEX_KEY
    legacy_data = read_legacy_key(data_path, 32)
    if legacy_data is not None:
        created = int(os.stat(data_path).st_mtime * 1000)
        imports.append(ring.wrap_existing(LEGACY_DATA_KEY[1], "data", "standard", legacy_data, created))
    legacy_index = read_legacy_key(index_path, INDEX_KEY_SIZE)
    if legacy_index is not None:
        created = int(os.stat(index_path).st_mtime * 1000)
        imports.append(ring.wrap_existing(INDEX_KEY_ID, "index", "standard", legacy_index, created))
    await ring.open(imports)
    # A legacy file is removed once the ring holds that very key, so destroying it later really destroys it.
    for path, key_id, secret in ((data_path, "dk-1", legacy_data), (index_path, INDEX_KEY_ID, legacy_index)):
        if secret is None:
            continue
        if key_id == INDEX_KEY_ID and ring.index_key == secret:
            remove_file(path)
            log.info("imported %s into the key ring as %s and removed the file", path.name, key_id)
        elif key_id != INDEX_KEY_ID and await _holds(ring, key_id, secret):
            remove_file(path)
            log.info("imported %s into the key ring as %s and removed the file", path.name, key_id)
        else:
            log.warning("%s differs from key %s in the database; left in place, not imported", path, key_id)
    return ring


async def _holds(ring: KeyRing, key_id: str, secret: bytes) -> bool:
    try:
        return (await ring.get(key_id)).secret == secret
    except Exception:  # a destroyed or foreign key simply is not this one
        return False
