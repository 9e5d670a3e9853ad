"""The `soak` scenario's measuring: a gateway's resident memory sampled while a steady paced load runs for minutes.

`rss_growth_mb_per_min` (contract) is the least-squares slope of the gateway process's RSS over the samples taken
once the nonce window is full (every entry older than the skew has started to expire): memory that keeps growing
after that is a leak, or a structure without a bound. Growth while the window fills is reported apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.load import Load

TARGET_RATE = 1200.0  # req/s: the steady load under which the in-process nonce map grew 16.6 MB/min (issue 13 M7)


def rss_mb(pid: int) -> float:
    """The process's resident set (VmRSS) now, in MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler(threading.Thread):
    """Samples (seconds since start, RSS MiB) of one process every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic() - self._t0, rss_mb(self.pid)))
            self._halt.wait(self.interval)

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join(timeout=5)
        self.samples.append((time.monotonic() - self._t0, rss_mb(self.pid)))
        return self.samples


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) samples, in MiB a minute; None with fewer than 3 samples."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return None
    return 60 * sum((t - mean_t) * (m - mean_m) for t, m in samples) / spread


def target_rate(gateway: Any) -> float:
    """TARGET_RATE, or 80 % of what the gateway reached in this run if that is less (a soak is not a stress test)."""
    measured = gateway.get("rps") if isinstance(gateway, dict) else None
    return min(TARGET_RATE, 0.8 * measured) if measured else TARGET_RATE


def summarize(samples: list[tuple[float, float]], loads: list[Load], skew: int, rate: float) -> dict[str, Any]:
    """The scenario's figures. The growth slope uses the samples from `skew` + 10 s on, or the second half of the
    run if that starts earlier (the window is full by then unless the run is shorter than twice the skew)."""
    total = samples[-1][0] if samples else 0.0
    since = min(skew + 10.0, total / 2)
    steady = [(t, m) for t, m in samples if t >= since]
    filling = [(t, m) for t, m in samples if t < since]
    requests = sum(load.requests for load in loads)
    seconds = sum(load.seconds for load in loads)
    growth = slope_per_minute(steady)
    return {
        "rss_growth_mb_per_min": round(growth, 3) if growth is not None else None,
        "rss_growth_while_filling_mb_per_min": (
            round(value, 3) if (value := slope_per_minute(filling)) is not None else None
        ),
        "steady_from_s": round(since, 1),
        "rss_start_mb": round(samples[0][1], 1) if samples else None,
        "rss_end_mb": round(samples[-1][1], 1) if samples else None,
        "rss_max_mb": round(max(m for _, m in samples), 1) if samples else None,
        "samples": len(samples),
        "duration_s": round(total, 1),
        "target_rate": round(rate, 1),
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "p50_ms": round(max(load.p50_ms for load in loads), 3) if loads else None,
        "p99_ms": round(max(load.p99_ms for load in loads), 3) if loads else None,
        "requests": requests,
        "errors": sum(load.errors for load in loads),
        "exhausted": sum(load.exhausted for load in loads),
        "skew_s": skew,
        "segments": len(loads),
    }
