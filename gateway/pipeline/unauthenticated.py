"""Refusals before authentication: audited one by one up to a rate per client address, then answered 429 and counted.

An unsigned or badly signed request costs its sender nothing, and its audit record costs the gateway a sealed row
that PostgreSQL never lets anyone delete. So the first refusals of each window, per client address and over all
addresses together, are recorded one by one (with only PREAUTH_BODY_BYTES of the body); beyond either bound a
refusal is answered 429 `unauthenticated_rate_limited` and only counted: each window, one record per address
holds its count. The windows are `limits` fixed windows on the quota store (Redis when configured, so every node
counts the same), falling back to this process's memory while that store is down.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError

from gateway import metrics
from gateway.audit.writer import AuditEvent, AuditUnavailable, new_request_id
from gateway.clock import SYSTEM_CLOCK, Clock, Periodic, periodic
from schemas.problems import ProblemCode

log = logging.getLogger("msjx.unauthenticated")
# How much of a body refused before authentication the audit record keeps (its size and digest cover all of it).
PREAUTH_BODY_BYTES = 1024
# Addresses counted separately in one window; the rest share one count, so a flood from many addresses still
# writes a bounded number of records.
MAX_COUNTED_ADDRESSES = 1024
OTHER_ADDRESSES = "*"
COUNTED_EVENT = "auth.refusals.counted"


@dataclass(frozen=True)
class Verdict:
    """Whether one refusal is audited on its own; if not, after how many seconds the client may retry."""

    audit: bool
    retry_after: int = 0


class UnauthenticatedGate:
    def __init__(
        self, storage: Storage, per_client: str, total: str, deployment: str, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        """`deployment` names the nodes that count together (those sharing a database), apart from others that
        share the same Redis."""
        self._deployment = deployment
        self._clock = clock
        self._limiter = FixedWindowRateLimiter(storage)
        self._fallback = FixedWindowRateLimiter(MemoryStorage())
        self._per_client: RateLimitItem = parse(per_client)
        self._total: RateLimitItem = parse(total)
        self._counts: Counter[str] = Counter()
        self._window_started = clock.time()
        self._flusher: Periodic | None = None

    @staticmethod
    def deployment_of(database_url: str) -> str:
        return hashlib.sha256(database_url.encode()).hexdigest()[:12]

    @property
    def window_seconds(self) -> int:
        return self._per_client.get_expiry()

    async def judge(self, address: str | None) -> Verdict:
        """Count one refusal before authentication from `address`: audit it on its own, or answer 429 and count it."""
        key = address or "unknown"
        try:
            return await self._judge(self._limiter, key)
        except StorageError:
            # The store is down: count in this process rather than audit every stranger's request.
            return await self._judge(self._fallback, key)

    async def _judge(self, limiter: FixedWindowRateLimiter, key: str) -> Verdict:
        scope = ("unauth", self._deployment)
        for item, identifiers in ((self._per_client, (*scope, key)), (self._total, (*scope, OTHER_ADDRESSES))):
            if not await limiter.hit(item, *identifiers):
                stats = await limiter.get_window_stats(item, *identifiers)
                self._count(key)
                # `limits` gives the reset as the machine's time plus the window's TTL, whatever our clock says.
                return Verdict(False, max(1, math.ceil(stats.reset_time - time.time())))
        return Verdict(True)

    def _count(self, key: str) -> None:
        metrics.UNAUTHENTICATED_COUNTED.inc()
        if key in self._counts or len(self._counts) < MAX_COUNTED_ADDRESSES:
            self._counts[key] += 1
        else:
            self._counts[OTHER_ADDRESSES] += 1

    def pending(self) -> dict[str, int]:
        """Refusals counted and not yet written, by address."""
        return dict(self._counts)

    async def flush(self, append: Callable[[AuditEvent], Awaitable[object]]) -> int:
        """Write one record per address counted since the last flush; returns how many were written."""
        counts, self._counts = self._counts, Counter()
        since, self._window_started = self._window_started, self._clock.time()
        written = 0
        for address, count in counts.items():
            event = AuditEvent(
                event=COUNTED_EVENT,
                request_id=new_request_id(),
                decision="refused",
                status_code=429,
                reason_code=ProblemCode.UNAUTHENTICATED_RATE_LIMITED,
                client_addr=None if address == OTHER_ADDRESSES else address,
                reason=f"{count} refusals before authentication answered 429 and counted since"
                f" {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(since))}"
                + (" from other addresses" if address == OTHER_ADDRESSES else ""),
            )
            try:
                await append(event)
            except AuditUnavailable:
                # Kept for the next flush: a count is never dropped while the gateway runs.
                self._counts[address] += count
                continue
            written += 1
        return written

    def start(self, append: Callable[[AuditEvent], Awaitable[object]]) -> None:
        self._flusher = periodic(
            "unauthenticated-counts", self.window_seconds, lambda: self.flush(append), on_error=_counts_not_written
        )

    async def close(self, append: Callable[[AuditEvent], Awaitable[object]]) -> None:
        """Stop the window task and write what was counted, while the audit writer still runs."""
        if self._flusher is not None:
            await self._flusher.stop()
            self._flusher = None
        await self.flush(append)


def _counts_not_written(exc: Exception) -> None:
    # The next window tries again; the counts stay.
    log.warning("counts of unauthenticated refusals not written: %s", type(exc).__name__)
