"""Adaptive concurrency for a batch's per-subject calls: more while the upstream keeps up, half when it pushes back.

Additive increase, multiplicative decrease (as TCP does): every `limit` successes raise the limit by one; a sign of
overload (429, 503, a timeout, no free connection, an open breaker) halves it and waits before the subject is asked
again. The ceiling is half the upstream's connection slots of this node, so interactive single calls always find
room: a batch never queues them behind itself.
"""

from __future__ import annotations

import asyncio
import random
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

    def __init__(self, ceiling: int, start: int = 4, attempts: int = 6, backoff: float = 0.2) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = min(start, self.ceiling)
        self.in_flight = 0
        self.attempts = attempts
        self.backoff = backoff
        self._successes = 0
        self._changed = asyncio.Condition()
        self.decreases = 0

    async def _acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1

    async def _release(self) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def _succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.ceiling:
            self._successes = 0
            self.limit += 1

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
                await self._release()
            await asyncio.sleep(random.uniform(wait / 2, wait))
        raise AssertionError("unreachable")
