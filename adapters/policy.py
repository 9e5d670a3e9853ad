"""How one upstream is called: timeouts, retries, concurrency and breaker thresholds, as plain data.

An adapter sizes and times its HTTP client from its policy; `resilience.Guarded` runs its calls under the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["BreakerConfig", "ResiliencePolicy"]


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
