"""Load from wrk: at full speed or paced to a rate, replaying pre-built requests through bench/replay.lua."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "replay.lua"


class LoadError(Exception):
    """wrk could not run, or its run is not usable (errors, or the pre-signed requests ran out)."""


def wrk_path() -> str | None:
    return shutil.which("wrk")


@dataclass(frozen=True)
class Load:
    """One wrk run's figures. `errors` counts socket errors, timeouts and statuses >= 400."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    exhausted: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    requests_file: Path | None = None,
    cycle: bool = False,
    rate: float = 0.0,
    threads: int = 1,
    timeout_s: int = 10,
) -> Load:
    """Run wrk against `url` for `seconds`; with `requests_file`, send those raw requests instead of a GET."""
    wrk = wrk_path()
    if wrk is None:
        raise LoadError("wrk is not installed (apt-get install -y wrk; `make bench` does it)")
    duration = max(1, round(seconds))
    command = [
        wrk,
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{duration}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        str(requests_file) if requests_file else "-",
        "1" if cycle else "0",
        f"{rate:.3f}",
        str(threads),
    ]
    env = {**os.environ, "BENCH_REPLAY": "1" if requests_file else "0", "BENCH_PACED": "1" if rate > 0 else "0"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + timeout_s + 30, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish within {duration + timeout_s + 30} s") from exc
    summary = next((line for line in done.stdout.splitlines() if line.startswith("BENCH_SUMMARY ")), None)
    if done.returncode != 0 or summary is None:
        raise LoadError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")
    figures = json.loads(summary.removeprefix("BENCH_SUMMARY "))
    errors = sum(
        figures[name] for name in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return Load(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        errors=errors,
        exhausted=figures["exhausted"],
    )
