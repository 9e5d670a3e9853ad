"""The bench's account of an event loop's run: running, waiting for a CPU, idle, from the kernel's schedstat."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness import LoopShares
from bench.procs import main_thread_schedstat
from bench.report import _split_lines

pytestmark = pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").exists(),
    reason="this kernel keeps no /proc/PID/task/TID/schedstat",
)


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_schedstat_counts_this_threads_cpu() -> None:
    before = main_thread_schedstat(os.getpid())
    _spin(0.2)
    after = main_thread_schedstat(os.getpid())
    assert before is not None and after is not None
    ran, waited = after[0] - before[0], after[1] - before[1]
    # Spinning for 0.2 s of wall time is running, or waiting to run while another process holds the CPUs.
    assert ran > 0.0 and waited >= 0.0
    assert ran + waited == pytest.approx(0.2, abs=0.05)


def test_a_process_that_is_gone_has_no_schedstat() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert main_thread_schedstat(child.pid) is None
    assert LoopShares([child.pid]).stop() is None


def test_shares_of_a_busy_and_of_an_idle_loop() -> None:
    busy = LoopShares([os.getpid()])
    _spin(0.3)
    spent = busy.stop()
    assert spent is not None
    assert spent["running"] + spent["waiting_for_cpu"] > 0.85
    assert spent["idle"] < 0.15
    idle = LoopShares([os.getpid()])
    time.sleep(0.3)
    slept = idle.stop()
    assert slept is not None
    assert slept["idle"] > 0.85
    assert slept["running"] < 0.15


def test_the_report_shows_the_loop_beside_the_cpu_split() -> None:
    split = {"gateway_sqlite": 283.0, "simulator": 40.0, "wrk": 24.0, "rest of machine": 8.0, "busy_cores": 1.53}
    shares = {"running": 0.803, "waiting_for_cpu": 0.089, "idle": 0.108}
    lines = _split_lines({"gateway_sqlite": {"cpu_split_us_per_req": split, "event_loop_shares": shares}})
    header = next(line for line in lines if line.startswith("| scenario"))
    row = next(line for line in lines if line.startswith("| gateway_sqlite"))
    assert header.endswith("| busy cores | loop running | loop waits for a CPU | loop idle |")
    assert row == "| gateway_sqlite | 283 | 40 | 24 | – | – | 8 | 1.53 | 80 % | 9 % | 11 % |"
    assert len(header.split("|")) == len(row.split("|"))
    # A run from before the loop was measured: dashes, not a wrong figure.
    older = _split_lines({"gateway_sqlite": {"cpu_split_us_per_req": split}})
    assert next(line for line in older if line.startswith("| gateway_sqlite")).endswith("| 1.53 | – | – | – |")
