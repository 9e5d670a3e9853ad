"""Per-upstream resilience: a bound on concurrent calls, a circuit breaker with half-open probes, retries of safe calls.

Timeouts (connect, read, total) are the HTTP client's, taken from the same `ResiliencePolicy`. The breaker's state
lives behind `BreakerStore`: `MemoryBreakerStore` here (one process), a Redis one from the gateway (every node sees
the same state). Adapters import nothing from the gateway, so the store is handed in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_before_delay, wait_random_exponential

from .base import UpstreamResult
from .errors import UpstreamBusy, UpstreamCircuitOpen, UpstreamError

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerStore",
    "Guard",
    "MemoryBreakerStore",
    "Permit",
    "ResiliencePolicy",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ResiliencePolicy:
    """How one upstream is called. Every number can be set per upstream (MSJX_UPSTREAM_POLICIES, `upstreams add`)."""

    total_timeout: float = 5.0  # one attempt, from asking for a connection to the last byte
    connect_timeout: float = 2.0  # TCP connect (capped at total_timeout)
    read_timeout: float | None = None  # longest silence between two reads; None: bounded by total_timeout only
    max_attempts: int = 3  # safe operations only; an unsafe one is always exactly one attempt
    retry_budget: float = 10.0  # no new attempt starts later than this after the first
    backoff_initial: float = 0.05  # full-jitter exponential backoff: random(0, min(max, initial * 2^n))
    backoff_max: float = 1.0
    max_concurrency: int = 64  # calls in flight to this upstream from one node
    queue_timeout: float = 1.0  # how long a call waits for a slot before 503 upstream_busy
    failure_threshold: int = 5  # failures within `window` before the breaker may open ...
    failure_ratio: float = 0.5  # ... and only if at least this share of the window's calls failed
    window: float = 10.0
    open_seconds: float = 10.0  # how long the breaker stays open before a probe is let through
    probes: int = 2  # consecutive successful probes that close it again

    def __post_init__(self) -> None:
        positive = ("total_timeout", "connect_timeout", "retry_budget", "backoff_max", "window", "open_seconds")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0")
        if self.read_timeout is not None and not self.read_timeout > 0:
            raise ValueError("read_timeout must be greater than 0")
        if self.backoff_initial < 0 or self.queue_timeout < 0:
            raise ValueError("backoff_initial and queue_timeout must not be negative")
        for name in ("max_attempts", "max_concurrency", "failure_threshold", "probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")

    @property
    def connect(self) -> float:
        return min(self.connect_timeout, self.total_timeout)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: ResiliencePolicy | None = None) -> ResiliencePolicy:
        """A policy from JSON-ish settings; unknown keys and wrong types raise ValueError naming the key."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown policy keys {unknown}; known: {sorted(known)}")
        changes: dict[str, Any] = {}
        for name, value in values.items():
            integral = name in ("max_attempts", "max_concurrency", "failure_threshold", "probes")
            if value is None and name == "read_timeout":
                changes[name] = None
            elif isinstance(value, bool) or not isinstance(value, int | float) or (integral and int(value) != value):
                raise ValueError(f"{name} must be {'an integer' if integral else 'a number'}")
            else:
                changes[name] = int(value) if integral else float(value)
        return replace(base or cls(), **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def breaker(self) -> BreakerConfig:
        return BreakerConfig(
            failure_threshold=self.failure_threshold,
            failure_ratio=self.failure_ratio,
            window_ms=int(self.window * 1000),
            open_ms=int(self.open_seconds * 1000),
            probes=self.probes,
            probe_lease_ms=int((self.total_timeout + self.queue_timeout) * 1000) + 1000,
        )


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int
    failure_ratio: float
    window_ms: int
    open_ms: int
    probes: int
    probe_lease_ms: int  # a probe that never reports (its node died) frees its slot after this


@dataclass(frozen=True)
class Permit:
    allowed: bool
    probe: bool = False
    retry_after_ms: int = 0


@dataclass(frozen=True)
class BreakerSnapshot:
    state: str  # closed, open or half_open
    calls: int
    failures: int


class BreakerStore(Protocol):
    """Where breakers keep their state. Both operations are atomic per upstream name.

    State machine: closed → open when, within a window, failures ≥ threshold and failures/calls ≥ ratio;
    open → half_open when open_ms has passed (on the next acquire); half_open lets ONE probe through at a time
    (a lease, so a lost probe frees itself); `probes` consecutive good probes → closed, one bad probe → open again.
    """

    kind: str

    async def acquire(self, name: str, config: BreakerConfig) -> Permit: ...

    async def record(self, name: str, config: BreakerConfig, ok: bool, probe: bool) -> str: ...

    async def snapshot(self, name: str) -> BreakerSnapshot: ...

    async def reset(self, name: str) -> None: ...


@dataclass
class _Breaker:
    state: str = "closed"
    open_until: float = 0.0
    probe_until: float = 0.0
    probes_ok: int = 0
    window_start: float = 0.0
    calls: int = 0
    failures: int = 0


class MemoryBreakerStore:
    """Breaker state in this process only: right for one node; the gateway uses Redis when it has it."""

    kind = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {}

    def _now_ms(self) -> float:
        return self._clock() * 1000

    async def acquire(self, name: str, config: BreakerConfig) -> Permit:
        breaker = self._breakers.get(name)
        if breaker is None or breaker.state == "closed":
            return Permit(True)
        now = self._now_ms()
        if breaker.state == "open":
            if now < breaker.open_until:
                return Permit(False, retry_after_ms=int(breaker.open_until - now))
            breaker.state, breaker.probes_ok, breaker.probe_until = "half_open", 0, 0.0
        if now >= breaker.probe_until:
            breaker.probe_until = now + config.probe_lease_ms
            return Permit(True, probe=True)
        return Permit(False, retry_after_ms=int(breaker.probe_until - now))

    async def record(self, name: str, config: BreakerConfig, ok: bool, probe: bool) -> str:
        breaker = self._breakers.setdefault(name, _Breaker())
        now = self._now_ms()
        if probe:
            if breaker.state != "half_open":
                return breaker.state
            if ok:
                breaker.probes_ok += 1
                if breaker.probes_ok >= config.probes:
                    self._breakers[name] = _Breaker()
                    return "closed"
                breaker.probe_until = 0.0
                return "half_open"
            breaker.state, breaker.open_until, breaker.probes_ok, breaker.probe_until = (
                "open",
                now + config.open_ms,
                0,
                0.0,
            )
            return "open"
        if now - breaker.window_start >= config.window_ms:
            breaker.window_start, breaker.calls, breaker.failures = now, 0, 0
        breaker.calls += 1
        if not ok:
            breaker.failures += 1
            if (
                breaker.state == "closed"
                and breaker.failures >= config.failure_threshold
                and breaker.failures >= config.failure_ratio * breaker.calls
            ):
                breaker.state, breaker.open_until = "open", now + config.open_ms
                breaker.calls = breaker.failures = 0
        return breaker.state

    async def snapshot(self, name: str) -> BreakerSnapshot:
        breaker = self._breakers.get(name) or _Breaker()
        return BreakerSnapshot(breaker.state, breaker.calls, breaker.failures)

    async def reset(self, name: str) -> None:
        self._breakers.pop(name, None)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.is_transient()


class Guard:
    """Runs one upstream's calls: slot (concurrency bound), breaker permit, the call, its outcome recorded.

    Safe operations are retried on transient errors (timeouts, dropped connections, 5xx, SOAP Server faults) with
    full-jitter exponential backoff, within `max_attempts` and `retry_budget`; each attempt asks the breaker again,
    so an upstream that goes down mid-retry stops being hammered. Unsafe operations get exactly one attempt.
    """

    def __init__(self, service: str, policy: ResiliencePolicy | None = None, store: BreakerStore | None = None) -> None:
        self.service = service
        self.policy = policy or ResiliencePolicy()
        self.store: BreakerStore = store or MemoryBreakerStore()
        self._config = self.policy.breaker()
        self._slots = asyncio.Semaphore(self.policy.max_concurrency)
        self.in_flight = 0

    async def run(self, safe: bool, call: Callable[[], Awaitable[UpstreamResult]]) -> UpstreamResult:
        # The first attempt runs bare: building and driving tenacity's machinery costs ~25 µs a call, which almost
        # every call (the ones that succeed at once) would pay for nothing.
        started = time.monotonic()
        try:
            result = await self._attempt(call)
        except UpstreamError as exc:
            exc.attempts = 1
            if not (safe and self.policy.max_attempts > 1 and _retryable(exc)):
                raise
            return await self._retry(call, exc, started)
        result.attempts = 1
        return result

    async def _retry(
        self, call: Callable[[], Awaitable[UpstreamResult]], first: UpstreamError, started: float
    ) -> UpstreamResult:
        """Attempts after a failed first one, exactly as tenacity would have run them had it run the first."""
        attempts = 1
        replay: UpstreamError | None = first

        async def attempt() -> UpstreamResult:
            nonlocal attempts, replay
            if replay is not None:  # tenacity's attempt 1 is the one already made: its failure, at once
                failure, replay = replay, None
                raise failure
            attempts += 1
            return await self._attempt(call)

        policy = self.policy
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts)
            # The budget counts from the first attempt's start, which was before tenacity's clock began.
            | stop_before_delay(max(policy.retry_budget - (time.monotonic() - started), 0.0)),
            wait=wait_random_exponential(multiplier=policy.backoff_initial, max=policy.backoff_max),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            result = await retrying(attempt)
        except UpstreamError as exc:
            exc.attempts = attempts
            raise
        result.attempts = attempts
        return result

    async def _attempt(self, call: Callable[[], Awaitable[UpstreamResult]]) -> UpstreamResult:
        permit = await self.store.acquire(self.service, self._config)
        if not permit.allowed:
            raise UpstreamCircuitOpen(self.service, permit.retry_after_ms / 1000)
        async with self._slot():
            try:
                result = await call()
            except UpstreamError as exc:
                await self.store.record(self.service, self._config, not exc.is_upstream_failure(), permit.probe)
                raise
            await self.store.record(self.service, self._config, True, permit.probe)
            return result

    def _slot(self) -> _Slot:
        return _Slot(self)

    async def state(self) -> BreakerSnapshot:
        return await self.store.snapshot(self.service)


class _Slot:
    """One of `max_concurrency` places; waiting longer than `queue_timeout` for one is UpstreamBusy."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def __aenter__(self) -> None:
        guard = self.guard
        slots = guard._slots
        if slots.locked():
            try:
                async with asyncio.timeout(guard.policy.queue_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise UpstreamBusy(guard.service, guard.policy.max_concurrency, guard.policy.queue_timeout) from None
        else:
            await slots.acquire()
        guard.in_flight += 1

    async def __aexit__(self, *exc_info: object) -> None:
        self.guard.in_flight -= 1
        self.guard._slots.release()
