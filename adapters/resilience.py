"""Per-upstream resilience: a bound on concurrent calls, a circuit breaker with half-open probes, retries of safe calls.

`Guarded(adapter, policy, store)` wraps an adapter in them, the way httpx wraps one transport in another: the
adapter stays a plain client of its upstream. Timeouts (connect, read, total) are the adapter's HTTP client's, from
the same `ResiliencePolicy`. The breaker's state lives behind `BreakerStore`: `MemoryBreakerStore` here (one
process), a Redis one from the gateway (every node sees the same state); adapters import nothing from the gateway,
so the store is handed in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pydantic import BaseModel
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_before_delay, wait_random_exponential

from .base import Adapter, Operation, UpstreamResult
from .errors import UpstreamBusy, UpstreamCircuitOpen, UpstreamError
from .policy import BreakerConfig, ResiliencePolicy

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerStore",
    "Guard",
    "Guarded",
    "MemoryBreakerStore",
    "Permit",
    "ResiliencePolicy",
]

T = TypeVar("T")


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


class Guarded(Adapter):
    """`adapter` with every call run under its upstream's `Guard`; otherwise the same adapter (operations, start...).

    `policy` defaults to the adapter's own, the one its HTTP client is timed by; `store` to one in this process.
    """

    def __init__(
        self, adapter: Adapter, policy: ResiliencePolicy | None = None, store: BreakerStore | None = None
    ) -> None:
        self.adapter = adapter
        self.service = adapter.service
        self.title = adapter.title
        self.provider_department = adapter.provider_department
        self.bulk_operations = adapter.bulk_operations  # type: ignore[misc]
        self.operations = adapter.operations  # type: ignore[misc]  # the adapter's: a registered one has its own
        self.policy = policy or adapter.policy
        self.guard = Guard(adapter.service, self.policy, store)

    async def start(self) -> None:
        await self.adapter.start()

    async def close(self) -> None:
        await self.adapter.close()

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        return await self.adapter.call(operation, params)

    async def run(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        return await self.guard.run(operation.safe, lambda: self.adapter.run(operation, params))

    async def call_bulk(
        self, operation: Operation, params: Sequence[BaseModel]
    ) -> list[UpstreamResult | UpstreamError]:
        return await self.adapter.call_bulk(operation, params)

    async def run_bulk(self, operation: Operation, params: Sequence[BaseModel]) -> list[UpstreamResult | UpstreamError]:
        async def bulk() -> UpstreamResult:
            # The guard deals in one result (it counts its attempts): the answers ride in it.
            return UpstreamResult({"answers": await self.adapter.run_bulk(operation, params)})

        carrier = await self.guard.run(operation.safe, bulk)
        answers: list[UpstreamResult | UpstreamError] = carrier.data["answers"]
        for answer in answers:
            answer.attempts = carrier.attempts
        return answers
