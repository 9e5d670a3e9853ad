"""Adaptive concurrency for a batch's per-subject calls: more while the upstream keeps up, half when it pushes back.

Additive increase, multiplicative decrease (as TCP does): every `limit` successes raise the limit by one; a sign of
overload (429, 503, a timeout, no free connection, an open breaker) halves it and waits before the subject is asked
again. The ceiling is half the upstream's connection slots of this node, so interactive single calls always find
room: a batch never queues them behind itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from adapters.errors import UpstreamBusy, UpstreamCircuitOpen, UpstreamError, UpstreamTimeout

T = TypeVar("T")
OVERLOAD_STATUSES = frozenset({"429", "503"})


def is_overload(exc: UpstreamError) -> bool:
    """The upstream (or our own bound in front of it) says: slower."""
    if isinstance(exc, UpstreamBusy | UpstreamCircuitOpen | UpstreamTimeout):
        return True
    return (exc.upstream_status or "").split(";")[0] in OVERLOAD_STATUSES


class AdaptiveLimit:
    """How many calls a node's batches keep in flight to one upstream."""

    def __init__(
        self,
        ceiling: int,
        start: int = 4,
        attempts: int = 6,
        backoff: float = 0.2,
        *,
        interactive: Callable[[], int] | None = None,
        floor: int = 0,
    ) -> None:
        self.ceiling = max(1, ceiling)
        # Interactive calls keep priority: while `interactive()` says some are under way on this node, at most
        # `floor` batch calls are in flight (those already in flight finish; 0: the batch does not yield).
        self._interactive = interactive
        self.floor = floor
        self.limit = min(start, self.ceiling)
        self.in_flight = 0
        self.attempts = attempts
        self.backoff = backoff
        self._successes = 0
        # Callers waiting for a slot, first come first served. A freed slot is handed to exactly one of them: an
        # asyncio.Condition's notify_all woke every waiter of a chunk (hundreds) for each call that ended, and that
        # re-checking was 8 % of a batch's event loop (docs/batches.md, "CPU").
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.decreases = 0

    def _room(self) -> int:
        if self.floor and self._interactive is not None and self._interactive() > 0:
            return min(self.limit, self.floor)
        return self.limit

    async def _acquire(self) -> None:
        if not self._waiters and self.in_flight < self._room():
            self.in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the slot is counted for us by whoever hands it over
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        self.in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        # Slots held back while interactive calls ran are handed over by the next release (at least one batch call
        # is always in flight while any waits, so there is a next one).
        room = self._room()
        while self._waiters and self.in_flight < room:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def _succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.ceiling:
            self._successes = 0
            self.limit += 1
            self._hand_over()

    def _overloaded(self) -> None:
        self._successes = 0
        self.decreases += 1
        self.limit = max(1, self.limit // 2)

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` within the limit; an overload answer is retried after a jittered, growing wait, up to
        `attempts` times, then raised like any other upstream error."""
        for attempt in range(1, self.attempts + 1):
            await self._acquire()
            try:
                result = await call()
            except UpstreamError as exc:
                if not is_overload(exc) or attempt == self.attempts:
                    raise
                self._overloaded()
                retry_after = getattr(exc, "retry_after", None)
                wait = retry_after if retry_after else self.backoff * (2 ** (attempt - 1))
            else:
                self._succeeded()
                return result
            finally:
                self._release()
            await asyncio.sleep(random.uniform(wait / 2, wait))
        raise AssertionError("unreachable")
