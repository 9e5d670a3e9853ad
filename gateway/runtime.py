"""Everything one gateway process holds while it runs: engine, directory, nonce store, audit writer, adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from adapters.base import Adapter
from gateway import db
from gateway.audit import AuditWriter, load_signer, witness_path
from gateway.audit_keys import open_keyring
from gateway.auth import Authenticator
from gateway.directory import Directory
from gateway.settings import Settings
from gateway.state import MemoryNonceStore, NonceStore, RedisNonceStore, connect_redis
from security.keyring import KeyRing
from security.masking import install_log_masking

log = logging.getLogger("msjx.runtime")
KEY_REFRESH_SECONDS = 1.0


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    """One adapter per configured upstream; a service without a URL is simply not offered."""
    from adapters.credit import CreditAdapter

    factories = {"credit": CreditAdapter}
    adapters: dict[str, Adapter] = {}
    for name, url in settings.upstream_urls.items():
        factory = factories.get(name)
        if factory is None:
            raise ValueError(f"MSJX_UPSTREAM_URLS names an unknown service {name!r}; known: {sorted(factories)}")
        adapters[name] = factory(url, timeout=settings.upstream_timeout)
    return adapters


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker
    directory: Directory
    nonces: NonceStore
    authenticator: Authenticator
    audit: AuditWriter
    adapters: dict[str, Adapter] = field(default_factory=dict)
    keyring: KeyRing | None = None
    _key_refresher: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings, adapters: dict[str, Adapter] | None = None) -> Runtime:
        engine = db.create_engine(settings)
        sessions = db.sessionmaker(engine)
        directory = Directory(sessions, ttl=settings.grant_cache_seconds)
        if settings.redis_url:
            nonces: NonceStore = RedisNonceStore(connect_redis(settings.redis_url))
            await nonces.ping()
            log.info("shared state in Redis: nonces are seen by every node")
        else:
            nonces = MemoryNonceStore()
            log.warning("MSJX_REDIS_URL is unset: nonces are kept in this process, so run ONE node only")
        install_log_masking()
        keyring = await open_keyring(settings, engine)
        audit = AuditWriter(
            engine,
            chain_id=settings.node_id,
            keyring=keyring,
            suite=settings.crypto_suite,
            signer=load_signer(settings),
            checkpoint_every=settings.audit_checkpoint_records,
            checkpoint_seconds=settings.audit_checkpoint_seconds,
            witness_path=witness_path(settings, settings.node_id),
            batch_max=settings.audit_batch_max,
        )
        await audit.start()
        log.info(
            "audit chain %s at height %d, suite %s, data key %s",
            settings.node_id,
            audit.height,
            settings.crypto_suite,
            keyring.current().key_id,
        )
        adapters = build_adapters(settings) if adapters is None else adapters
        for adapter in adapters.values():
            await adapter.start()
        authenticator = Authenticator(directory, nonces, settings.signature_max_skew)
        runtime = cls(settings, engine, sessions, directory, nonces, authenticator, audit, adapters, keyring)
        runtime._key_refresher = asyncio.create_task(runtime._refresh_keys(), name="audit-key-refresh")
        return runtime

    async def _refresh_keys(self) -> None:
        """Re-read the key ring every second: rotations and destructions by any node reach this one without restart."""
        assert self.keyring is not None
        while True:
            await asyncio.sleep(KEY_REFRESH_SECONDS)
            try:
                await self.keyring.refresh()
                await self.keyring.rotate_if_due()
            except Exception as exc:  # the store may be briefly down; the keys in memory stay usable
                log.warning("audit key ring refresh failed: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._key_refresher is not None:
            self._key_refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._key_refresher
        await self.audit.close()
        for adapter in self.adapters.values():
            await adapter.close()
        await self.nonces.close()
        await self.engine.dispose()

    async def readiness(self) -> dict[str, str]:
        """Each dependency's state as 'ok' or a short reason; the gateway is ready only when all are 'ok'."""
        checks: dict[str, str] = {}
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # a readiness probe reports, it never raises
            checks["database"] = f"unavailable: {type(exc).__name__}"
        if self.settings.redis_url:
            try:
                await self.nonces.ping()
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"unavailable: {type(exc).__name__}"
        key_age = (time.time_ns() // 1_000_000 - self.keyring.refreshed_ms) / 1000 if self.keyring else 0.0
        if not self.audit.running:
            checks["audit"] = "writer stopped"
        elif self.audit.last_error is not None:
            checks["audit"] = f"last commit failed: {self.audit.last_error}"
        elif key_age > 10:
            # Rotations and destructions by other nodes no longer reach this one.
            checks["audit"] = f"key ring not refreshed for {key_age:.0f} s"
        else:
            checks["audit"] = "ok"
        return checks
