"""The event loop's load as the signature offload reads it, and the offload decision made from it."""

from __future__ import annotations

import time
from typing import Any, cast

from gateway.pipeline.exchange import OFFLOAD_BUSY, Exchanges
from gateway.pipeline.loop_load import LoopLoad, thread_active_seconds


class Clocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.active = 5.0

    def run(self, seconds: float, busy: float) -> None:
        self.wall += seconds
        self.active += seconds * busy


def test_the_threads_active_time_grows_with_its_cpu_time() -> None:
    active = thread_active_seconds()
    before, cpu = active(), time.thread_time()
    while time.thread_time() - cpu < 0.05:  # spin
        pass
    assert active() - before >= 0.045


def test_the_load_is_active_time_over_wall_time_of_the_last_whole_window() -> None:
    clocks = Clocks()
    load = LoopLoad(0.125, wall=lambda: clocks.wall, active=lambda: clocks.active)
    assert load.busy() == 0.0, "nothing measured yet"
    clocks.run(0.25, 0.875)
    assert load.busy() == 0.875
    clocks.run(0.0625, 0.125)
    assert load.busy() == 0.875, "a window not yet whole leaves the last figure"
    clocks.run(0.0625, 0.125)
    assert load.busy() == 0.125


def _exchanges(offload_above: int, in_progress: int, busy: float) -> Exchanges:
    clocks = Clocks()
    load = LoopLoad(0.125, wall=lambda: clocks.wall, active=lambda: clocks.active)
    clocks.run(0.125, busy)
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
