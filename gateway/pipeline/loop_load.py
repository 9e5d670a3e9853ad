"""How busy the event loop's thread has been lately: its CPU time over wall time, measured a window at a time.

Used to decide whether a signature check goes to the verifier process (gateway/pipeline/exchange.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

# A window long enough to hold many requests at any useful rate, short enough to follow a change of load.
WINDOW_SECONDS = 0.1


class LoopLoad:
    """The share of wall time the calling thread spent on the CPU in the last whole window (0 to 1).

    Read it from the event loop's thread only: `time.thread_time` is the calling thread's CPU time. A read costs a
    clock read; the thread's CPU time (a system call) is read once a window.
    """

    def __init__(
        self,
        window: float = WINDOW_SECONDS,
        wall: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self._window = window
        self._clock, self._cpu_clock = wall, cpu
        self._wall = wall()
        self._cpu = cpu()
        self._busy = 0.0

    def busy(self) -> float:
        now = self._clock()
        elapsed = now - self._wall
        if elapsed >= self._window:
            cpu = self._cpu_clock()
            self._busy = (cpu - self._cpu) / elapsed
            self._wall, self._cpu = now, cpu
        return self._busy
