"""The event loop's load as the signature offload reads it, and the offload decision made from it."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, cast

from gateway.pipeline.exchange import OFFLOAD_BUSY, OFFLOAD_SPARE, Exchanges
from gateway.pipeline.loop_load import LoopLoad, machine_idle_seconds, thread_active_seconds


class Clocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.active = 5.0
        self.idle = 7000.0

    def run(self, seconds: float, busy: float, idle_cpus: float = 1.0) -> None:
        self.wall += seconds
        self.active += seconds * busy
        self.idle += seconds * idle_cpus

    def load(self, window: float = 0.125, machine_window: float = 0.5) -> LoopLoad:
        return LoopLoad(
            window,
            wall=lambda: self.wall,
            active=lambda: self.active,
            machine_window=machine_window,
            idle=lambda: self.idle,
        )


def test_the_threads_active_time_grows_with_its_cpu_time() -> None:
    active = thread_active_seconds()
    before, cpu = active(), time.thread_time()
    while time.thread_time() - cpu < 0.05:  # spin
        pass
    assert active() - before >= 0.045


def test_the_machines_idle_time_is_read_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice: idle and iowait count, steal does not.
    stat.write_text(f"cpu  900 10 300 {50 * tick} {2 * tick} 0 7 {40 * tick} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    idle = machine_idle_seconds(str(stat))
    assert idle is not None and idle() == 52.0
    stat.write_text(f"cpu  900 10 300 {51 * tick} {2 * tick} 0 7 {90 * tick} 0 0\n")
    assert idle() == 53.0
    stat.write_text("cpu  nothing\n")
    assert machine_idle_seconds(str(stat)) is None
    assert machine_idle_seconds(str(tmp_path / "missing")) is None


def test_the_real_machines_idle_time_never_runs_backwards_or_ahead_of_its_cpus() -> None:
    idle = machine_idle_seconds()
    assert idle is not None, "/proc/stat is readable on Linux"
    before, started = idle(), time.monotonic()
    time.sleep(0.3)
    gained, elapsed = idle() - before, time.monotonic() - started
    cpus = os.cpu_count() or 1
    assert 0.0 <= gained <= cpus * elapsed + 2 * cpus / os.sysconf("SC_CLK_TCK")


def test_the_load_is_active_time_over_wall_time_of_the_last_whole_window() -> None:
    clocks = Clocks()
    load = clocks.load()
    assert load.busy() == 0.0, "nothing measured yet"
    clocks.run(0.25, 0.875)
    assert load.busy() == 0.875
    clocks.run(0.0625, 0.125)
    assert load.busy() == 0.875, "a window not yet whole leaves the last figure"
    clocks.run(0.0625, 0.125)
    assert load.busy() == 0.125


def test_spare_cpus_are_idle_time_over_wall_time_of_the_last_whole_machine_window() -> None:
    clocks = Clocks()
    load = clocks.load(machine_window=0.5)
    assert load.spare() == math.inf, "unknown before a whole window: nothing is held back for it"
    clocks.run(0.5, 1.0, idle_cpus=0.75)
    assert load.spare() == 0.75
    clocks.run(0.25, 1.0, idle_cpus=0.5)
    assert load.spare() == 0.75, "a window not yet whole leaves the last figure"
    clocks.run(0.25, 1.0, idle_cpus=0.0)
    assert load.spare() == 0.25


def _exchanges(offload_above: int, in_progress: int, busy: float, idle_cpus: float = 1.0) -> Exchanges:
    clocks = Clocks()
    load = clocks.load(machine_window=0.125)
    load.spare()
    clocks.run(0.125, busy, idle_cpus)
    unused = cast(Any, None)
    return Exchanges(
        authenticator=unused,
        audit=unused,
        database=unused,
        shared_state=unused,
        offload_above=offload_above,
        in_progress=in_progress,
        loop_load=load,
    )


def test_a_check_is_offloaded_only_with_many_requests_in_progress_and_a_busy_loop() -> None:
    assert _exchanges(4, 32, OFFLOAD_BUSY + 0.1).offload()
    assert not _exchanges(4, 32, OFFLOAD_BUSY - 0.1).offload(), "requests waiting on I/O do not make a loop busy"
    assert not _exchanges(4, 4, 1.0).offload()
    assert _exchanges(0, 1, 0.0).offload(), "a bound of 0 sends every check"


def test_a_check_stays_on_the_loop_when_no_cpu_is_idle_to_take_it() -> None:
    assert _exchanges(4, 32, 1.0, idle_cpus=OFFLOAD_SPARE).offload()
    assert not _exchanges(4, 32, 1.0, idle_cpus=OFFLOAD_SPARE - 0.1).offload(), "a saturated machine checks inline"
    assert _exchanges(0, 32, 1.0, idle_cpus=0.0).offload(), "a bound of 0 still sends every check"
