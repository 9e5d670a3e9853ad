"""Everything one gateway process holds while it runs: engine, directory, nonce store, audit writer, adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from adapters.base import Adapter
from adapters.resilience import BreakerStore, Guarded, MemoryBreakerStore
from gateway.access.authenticate import Authenticator
from gateway.access.directory import Directory
from gateway.access.nonces import MemoryNonceStore, NonceStore, RedisNonceStore
from gateway.access.quota_rebuild import rebuild_quota_windows
from gateway.access.quotas import Quotas
from gateway.audit.keys import open_keyring
from gateway.audit.signer import load_signer
from gateway.audit.witness import witness_path
from gateway.audit.writer import AuditWriter
from gateway.clock import SYSTEM_CLOCK, Clock, Periodic, periodic
from gateway.payments.idempotency import IdempotencyStore
from gateway.payments.intents import Payments
from gateway.pipeline.exchange import Exchanges
from gateway.pipeline.unauthenticated import UnauthenticatedGate
from gateway.settings import Settings
from gateway.sharing.ownership import seed_owners
from gateway.storage import db
from gateway.storage.health import Dependency, is_database_outage
from gateway.storage.redis import SharedRedis
from gateway.storage.redis_eviction import WATCH_SECONDS, EvictionWatch
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


def breaker_store(settings: Settings, redis: SharedRedis | None) -> BreakerStore:
    """Where circuit breakers keep state: Redis when configured (shared by every node), else this process."""
    if redis is not None:
        from gateway.upstreams.breakers import RedisBreakerStore, breaker_prefix

        return RedisBreakerStore(redis.client, breaker_prefix(redis.prefix, settings.async_database_url))
    return MemoryBreakerStore()


def _quiet(exc: Exception) -> None:
    log.debug("Redis eviction watch skipped a look: %s", type(exc).__name__)


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
    redis: SharedRedis | None = None,
    clock: Clock = SYSTEM_CLOCK,
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
        redis=redis,
        clock=clock,
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
        clock=clock,
    )


@dataclass
class Runtime:
    """What one gateway process holds while it runs, and the order in which it starts and stops it.

    `start` opens the stores, the audit writer, the adapters and the background tasks (key refresh, quota rebuild
    after a Redis restart, payment reconciliation); `close` stops them in reverse. Request handlers do not take
    the whole of it: the pipeline every exchange goes through is `exchanges`, and each route asks for the few
    services it uses (gateway/api/deps.py).
    """

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
    # The process's one Redis client, which nonces, quotas, breakers and payment locks share; closed last.
    redis: SharedRedis | None = None
    # Wall time for everything this process does (tests give their own).
    clock: Clock = SYSTEM_CLOCK
    # Refusals before authentication: audited one by one up to a rate per address, then counted (start sets it).
    unauthenticated: UnauthenticatedGate | None = None
    # Redis beyond nonces and quotas (breakers, payment locks): a 503 of its own when it is down.
    shared_state: Dependency = field(
        default_factory=lambda: Dependency("shared_state", ProblemCode.STATE_STORE_UNAVAILABLE)
    )
    # What every audited exchange goes through (start sets it).
    exchanges: Exchanges | None = None
    _key_refresher: Periodic | None = None
    _eviction_watch: Periodic | None = None
    _quota_rebuild: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, settings: Settings, adapters: Mapping[str, Adapter] | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> Runtime:
        engine = db.create_engine(settings)
        sessions = db.sessionmaker(engine)
        database = Dependency("database", ProblemCode.DATABASE_UNAVAILABLE)
        directory = Directory(sessions, ttl=settings.grant_cache_seconds, health=database, clock=clock)
        redis = (
            SharedRedis(settings.redis_url, settings.redis_prefix, settings.redis_max_connections)
            if settings.redis_url
            else None
        )
        if redis is not None:
            nonces: NonceStore = RedisNonceStore(redis, clock)
            await nonces.ping()
            log.info("shared state in Redis: nonces are seen by every node")
        else:
            nonces = MemoryNonceStore(clock)
            log.warning("MSJX_REDIS_URL is unset: nonces are kept in this process, so run ONE node only")
        install_log_masking()
        keyring = await open_keyring(settings, engine, clock)
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
            commit_deadline=settings.audit_commit_deadline,
            health=database,
            clock=clock,
        )
        await audit.start()
        log.info(
            "audit chain %s at height %d, suite %s, data key %s",
            settings.node_id,
            audit.height,
            settings.crypto_suite,
            keyring.current().key_id,
        )
        breakers = breaker_store(settings, redis)
        plain = build_adapters(settings) if adapters is None else adapters
        static = {name: Guarded(adapter, store=breakers) for name, adapter in plain.items()}
        try:
            await seed_owners(sessions, static, clock)
        except Exception as exc:  # like the registered upstreams: serve; a service without an owner stays undecidable
            log.error("owners of the configured services not recorded: %s", exc)
        catalog = LiveAdapters(static, sessions, breakers, health=database)
        await catalog.start()
        offload = await start_offload(settings)
        authenticator = Authenticator(directory, nonces, settings.signature_max_skew, offload, clock)
        quotas = Quotas.build(redis, clock)
        # In memory the counters start from zero with the process (and in Redis when it lost them): today's calls
        # are in the audit records, so a restart does not give a used-up quota back.
        await rebuild_quota_windows(engine, quotas)
        payments = start_payments(settings, sessions, audit, catalog, health=database, redis=redis, clock=clock)
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
            redis=redis,
            clock=clock,
        )
        runtime.unauthenticated = UnauthenticatedGate(
            quotas.storage,
            settings.unauthenticated_rate,
            settings.unauthenticated_total_rate,
            UnauthenticatedGate.deployment_of(settings.async_database_url),
            clock,
        )
        runtime.unauthenticated.start(audit.append)
        runtime.exchanges = Exchanges(
            authenticator=authenticator,
            audit=audit,
            database=database,
            shared_state=runtime.shared_state,
            offload_above=settings.signature_offload_above,
            unauthenticated=runtime.unauthenticated,
        )
        # Rotations and destructions by any node reach this one within a second, without a restart.
        runtime._key_refresher = periodic(
            "audit-key-refresh", KEY_REFRESH_SECONDS, runtime._refresh_keys, on_error=runtime._keys_not_refreshed
        )
        if quotas.epoch is not None:
            quotas.epoch.on_loss(runtime._rebuild_quotas_soon)
        if redis is not None:
            watch = EvictionWatch(redis.client, redis.key("watch", settings.node_id), redis.epoch.forget, clock.time)
            # The first look before the node serves, so that what it forgets holds from the first call.
            try:
                await watch.look()
            except Exception as exc:  # Redis away is reported by the stores that use it; the watch looks again
                _quiet(exc)
            runtime._eviction_watch = periodic("redis-eviction-watch", WATCH_SECONDS, watch.look, on_error=_quiet)
        return runtime

    def _rebuild_quotas_soon(self) -> None:
        """Redis lost its counters (restarted, failed over, flushed): rebuild today's quota windows from the audit
        records; calls wait for it."""
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
                    log.warning("quota windows not rebuilt yet after Redis lost its keys: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
        log.error("quota windows were not rebuilt after Redis lost its keys: today's counts restart from zero")

    async def _refresh_keys(self) -> None:
        assert self.keyring is not None
        await self.keyring.refresh()
        await self.keyring.rotate_if_due()

    def _keys_not_refreshed(self, exc: Exception) -> None:
        # The store may be briefly down; the keys in memory stay usable.
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
            await self._key_refresher.stop()
        if self._eviction_watch is not None:
            await self._eviction_watch.stop()
        if self.payments is not None:
            await self.payments.close()
            await self.payments.store.close()
        if self.unauthenticated is not None:
            await self.unauthenticated.close(self.audit.append)
        await self.audit.close()
        await self.adapters.close()
        await self.nonces.close()
        await self.authenticator.close()
        await self.quotas.close()
        if self.redis is not None:
            await self.redis.close()
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
        key_age = (self.clock.ms() - self.keyring.refreshed_ms) / 1000 if self.keyring else 0.0
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
