"""How busy the event loop's thread has been lately: the share of wall time it was running or waiting for a CPU.

Used to decide whether a signature check goes to the verifier process (gateway/pipeline/exchange.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

# A window long enough to hold many requests at any useful rate, short enough to follow a change of load.
WINDOW_SECONDS = 0.1
SCHEDSTAT = "/proc/thread-self/schedstat"


def thread_active_seconds() -> Callable[[], float]:
    """A reader of the calling thread's time running or runnable (Linux schedstat: CPU time plus run-queue wait).

    Why the wait too: on a machine shared with other work, a loop that has requests to serve but no CPU is busy,
    not idle; its CPU time alone looked half idle at full load (docs/performance.md). Where schedstat is missing
    (not Linux) or empty (schedstats off), the thread's CPU time. The file is opened once, by the thread it is for."""
    try:
        fd = os.open(SCHEDSTAT, os.O_RDONLY)
    except OSError:
        return time.thread_time

    def read() -> float:
        running, waiting = os.pread(fd, 128, 0).split()[:2]
        return (int(running) + int(waiting)) / 1e9

    try:
        if read() > 0:
            return read
    except (OSError, ValueError):
        pass
    os.close(fd)
    return time.thread_time


class LoopLoad:
    """The share of wall time (0 to 1) the event loop's thread was running or runnable in the last whole window.

    Read it from the event loop's thread only. A read costs a clock read; the thread's times are read once a window.
    """

    def __init__(
        self,
        window: float = WINDOW_SECONDS,
        wall: Callable[[], float] = time.perf_counter,
        active: Callable[[], float] | None = None,
    ) -> None:
        self._window = window
        self._clock = wall
        self._active_clock = active  # None: thread_active_seconds(), made at the first read, on the loop's thread
        self._wall = wall()
        self._active = active() if active is not None else 0.0
        self._busy = 0.0

    def busy(self) -> float:
        now = self._clock()
        if self._active_clock is None:
            self._active_clock = thread_active_seconds()
            self._wall, self._active = now, self._active_clock()
            return self._busy
        elapsed = now - self._wall
        if elapsed >= self._window:
            active = self._active_clock()
            self._busy = (active - self._active) / elapsed
            self._wall, self._active = now, active
        return self._busy
