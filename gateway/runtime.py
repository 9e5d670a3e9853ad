"""Everything one gateway process holds while it runs: engine, directory, nonce store, audit writer, adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from adapters.base import Adapter
from adapters.resilience import BreakerStore, Guarded, MemoryBreakerStore
from gateway.access.authenticate import Authenticator
from gateway.access.directory import Directory
from gateway.access.nonces import MemoryNonceStore, NonceStore, RedisEpoch, RedisNonceStore, connect_redis
from gateway.access.quota_rebuild import rebuild_quota_windows
from gateway.access.quotas import Quotas
from gateway.audit.keys import open_keyring
from gateway.audit.signer import load_signer
from gateway.audit.witness import witness_path
from gateway.audit.writer import AuditWriter
from gateway.payments.idempotency import IdempotencyStore
from gateway.payments.intents import Payments
from gateway.pipeline.unauthenticated import UnauthenticatedGate
from gateway.settings import Settings
from gateway.sharing.ownership import seed_owners
from gateway.storage import db
from gateway.storage.health import Dependency, is_database_outage
from gateway.upstreams.registry import LiveAdapters
from schemas.problems import ProblemCode
from security.keyring import KeyRing
from security.masking import install_log_masking
from security.verifier_process import ProcessVerifier, VerifierError

log = logging.getLogger("msjx.runtime")
KEY_REFRESH_SECONDS = 1.0


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    """One adapter per configured upstream (not yet guarded); a service without a URL is simply not offered.

    Each gets its resilience policy: MSJX_UPSTREAM_TIMEOUT as the per-attempt timeout, then its entry in
    MSJX_UPSTREAM_POLICIES (e.g. {"golden-tax": {"max_attempts": 2, "open_seconds": 30}}).
    """
    from adapters.credit import CreditAdapter
    from adapters.golden_tax import GoldenTaxAdapter
    from adapters.market import MarketAdapter
    from adapters.resilience import ResiliencePolicy
    from adapters.treasury import TreasuryAdapter

    factories: dict[str, Callable[..., Adapter]] = {
        "credit": CreditAdapter,
        "golden-tax": GoldenTaxAdapter,
        "market": MarketAdapter,
        "treasury": TreasuryAdapter,
    }
    unknown = sorted(set(settings.upstream_policies) - set(settings.upstream_urls))
    if unknown:
        raise ValueError(f"MSJX_UPSTREAM_POLICIES names services without a URL: {unknown}")
    adapters: dict[str, Adapter] = {}
    for name, url in settings.upstream_urls.items():
        factory = factories.get(name)
        if factory is None:
            raise ValueError(f"MSJX_UPSTREAM_URLS names an unknown service {name!r}; known: {sorted(factories)}")
        try:
            policy = ResiliencePolicy.from_mapping(
                settings.upstream_policies.get(name, {}), base=ResiliencePolicy(total_timeout=settings.upstream_timeout)
            )
        except ValueError as exc:
            raise ValueError(f"MSJX_UPSTREAM_POLICIES[{name!r}]: {exc}") from None
        adapters[name] = factory(url, timeout=settings.upstream_timeout, policy=policy)
    return adapters


def breaker_store(settings: Settings) -> BreakerStore:
    """Where circuit breakers keep state: Redis when configured (shared by every node), else this process."""
    if settings.redis_url:
        from gateway.upstreams.breakers import RedisBreakerStore, breaker_prefix

        return RedisBreakerStore(connect_redis(settings.redis_url), breaker_prefix(settings.async_database_url))
    return MemoryBreakerStore()


async def start_offload(settings: Settings) -> ProcessVerifier | None:
    """The verifier process that takes signature checks off the event loop when it is congested, if configured."""
    if settings.signature_verifier == "inline":
        return None
    checker = ProcessVerifier()
    try:
        await checker.start()
    except (VerifierError, OSError) as exc:  # correct without it, only slower: checks run here until it starts
        log.error("signature verifier process did not start (%s); checking in this process for now", exc)
    return checker


def start_payments(
    settings: Settings,
    sessions: async_sessionmaker,
    audit: AuditWriter,
    adapters: Mapping[str, Adapter],
    health: Dependency | None = None,
) -> Payments | None:
    """The payment path and its reconciler, when the treasury is offered."""
    treasury = adapters.get("treasury")
    if treasury is None:
        return None
    store = IdempotencyStore(
        sessions,
        node_id=settings.node_id,
        # A lease must outlast the work it covers: at most submit, status, submit again, status, each bounded by
        # the upstream timeout.
        lease_seconds=max(settings.idempotency_lease_seconds, 5 * settings.upstream_timeout),
        redis=connect_redis(settings.redis_url) if settings.redis_url else None,
        redis_prefix=settings.redis_prefix,
    )
    return Payments(
        sessions=sessions,
        adapter=treasury,
        audit=audit,
        store=store,
        resend_grace_seconds=2 * settings.upstream_timeout,
        reconcile_seconds=settings.payment_reconcile_seconds,
        retention_days=settings.idempotency_retention_days,
        kill_after_accept=settings.payment_fault_kill_after_accept,
        health=health,
    )


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker
    directory: Directory
    nonces: NonceStore
    authenticator: Authenticator
    audit: AuditWriter
    quotas: Quotas
    adapters: LiveAdapters = field(default_factory=lambda: LiveAdapters({}))
    breakers: BreakerStore = field(default_factory=MemoryBreakerStore)
    payments: Payments | None = None
    keyring: KeyRing | None = None
    # Refusals before authentication: audited one by one up to a rate per address, then counted (start sets it).
    unauthenticated: UnauthenticatedGate | None = None
    # Signed exchanges this worker has begun and not yet answered: how congested its event loop is.
    exchanges_in_progress: int = 0
    # Redis beyond nonces and quotas (breakers, payment locks): a 503 of its own when it is down.
    shared_state: Dependency = field(
        default_factory=lambda: Dependency("shared_state", ProblemCode.STATE_STORE_UNAVAILABLE)
    )
    _key_refresher: asyncio.Task[None] | None = None
    _quota_rebuild: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings, adapters: Mapping[str, Adapter] | None = None) -> Runtime:
        engine = db.create_engine(settings)
        sessions = db.sessionmaker(engine)
        database = Dependency("database", ProblemCode.DATABASE_UNAVAILABLE)
        directory = Directory(sessions, ttl=settings.grant_cache_seconds, health=database)
        if settings.redis_url:
            epoch = RedisEpoch()
            nonces: NonceStore = RedisNonceStore(connect_redis(settings.redis_url, epoch=epoch), epoch)
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
            health=database,
        )
        await audit.start()
        log.info(
            "audit chain %s at height %d, suite %s, data key %s",
            settings.node_id,
            audit.height,
            settings.crypto_suite,
            keyring.current().key_id,
        )
        breakers = breaker_store(settings)
        plain = build_adapters(settings) if adapters is None else adapters
        static = {name: Guarded(adapter, store=breakers) for name, adapter in plain.items()}
        try:
            await seed_owners(sessions, static)
        except Exception as exc:  # like the registered upstreams: serve; a service without an owner stays undecidable
            log.error("owners of the configured services not recorded: %s", exc)
        catalog = LiveAdapters(static, sessions, breakers, health=database)
        await catalog.start()
        offload = await start_offload(settings)
        authenticator = Authenticator(directory, nonces, settings.signature_max_skew, offload)
        quotas = Quotas.from_settings(settings)
        # In memory the counters start from zero with the process (and in Redis when it lost them): today's calls
        # are in the audit records, so a restart does not give a used-up quota back.
        await rebuild_quota_windows(engine, quotas)
        payments = start_payments(settings, sessions, audit, catalog, health=database)
        if payments is not None:
            await payments.start()
        runtime = cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            directory=directory,
            nonces=nonces,
            authenticator=authenticator,
            audit=audit,
            quotas=quotas,
            adapters=catalog,
            breakers=breakers,
            payments=payments,
            keyring=keyring,
        )
        runtime.unauthenticated = UnauthenticatedGate(
            quotas.storage,
            settings.unauthenticated_rate,
            settings.unauthenticated_total_rate,
            UnauthenticatedGate.deployment_of(settings.async_database_url),
        )
        runtime.unauthenticated.start(audit.append)
        runtime._key_refresher = asyncio.create_task(runtime._refresh_keys(), name="audit-key-refresh")
        if quotas.epoch is not None:
            quotas.epoch.on_restart(runtime._rebuild_quotas_soon)
        return runtime

    def _rebuild_quotas_soon(self) -> None:
        """Redis restarted: rebuild today's quota windows from the audit records; calls wait for it."""
        if self._quota_rebuild is not None and not self._quota_rebuild.done():
            self._quota_rebuild.cancel()  # it may have read the old server's counters: start again on the new one
        self._quota_rebuild = asyncio.get_running_loop().create_task(self._rebuild_quotas(), name="quota-rebuild")
        self.quotas.rebuild_with(self._quota_rebuild)

    async def _rebuild_quotas(self) -> None:
        for attempt in range(30):
            try:
                await rebuild_quota_windows(self.engine, self.quotas)
                return
            except Exception as exc:  # the database or Redis may still be coming back: try again shortly
                if attempt == 0:
                    log.warning("quota windows not rebuilt yet after the Redis restart: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
        log.error("quota windows were not rebuilt after the Redis restart: today's counts restart from zero")

    async def _refresh_keys(self) -> None:
        """Re-read the key ring every second: rotations and destructions by any node reach this one without restart."""
        assert self.keyring is not None
        while True:
            await asyncio.sleep(KEY_REFRESH_SECONDS)
            try:
                await self.keyring.refresh()
                await self.keyring.rotate_if_due()
            except Exception as exc:  # the store may be briefly down; the keys in memory stay usable
                if is_database_outage(exc):
                    self.directory.health.failed(exc)
                else:
                    log.warning("audit key ring refresh failed: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._quota_rebuild is not None:
            self._quota_rebuild.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._quota_rebuild
        if self._key_refresher is not None:
            self._key_refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._key_refresher
        if self.payments is not None:
            await self.payments.close()
            await self.payments.store.close()
        if self.unauthenticated is not None:
            await self.unauthenticated.close(self.audit.append)
        await self.audit.close()
        await self.adapters.close()
        close_breakers = getattr(self.breakers, "close", None)
        if close_breakers is not None:
            await close_breakers()
        await self.nonces.close()
        await self.authenticator.close()
        await self.quotas.close()
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
