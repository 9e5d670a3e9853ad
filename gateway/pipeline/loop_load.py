"""How busy the event loop's thread has been lately (the share of wall time it was running or waiting for a CPU), and
how many of the machine's CPUs were idle meanwhile.

Used to decide whether a signature check goes to the verifier process (gateway/pipeline/exchange.py)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

# A window long enough to hold many requests at any useful rate, short enough to follow a change of load.
WINDOW_SECONDS = 0.1
# The machine's idle time comes in clock ticks (100 a second a CPU): over 0.1 s a 2-CPU machine has 20 of them, too few
# to tell 0.1 idle CPUs from none; over 0.5 s, 100.
MACHINE_WINDOW_SECONDS = 0.5
SCHEDSTAT = "/proc/thread-self/schedstat"
PROC_STAT = "/proc/stat"


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


def machine_idle_seconds(path: str = PROC_STAT) -> Callable[[], float] | None:
    """A reader of the CPU time all the machine's CPUs have spent idle (or waiting for I/O), in seconds, from Linux's
    /proc/stat; None where that cannot be read. Time a hypervisor gave to other guests (steal) is not idle."""
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        # The first line: "cpu  user nice system idle iowait irq softirq steal guest guest_nice", in ticks. Opened
        # for each read (twice a second at most), so no descriptor outlives the reader.
        with open(path, "rb") as stat:
            fields = stat.readline().split()
        return (int(fields[4]) + int(fields[5])) / tick

    try:
        read()
    except (OSError, ValueError, IndexError):
        return None
    return read


class WindowedRate:
    """How fast a cumulative reading grew, per wall second, over the last whole window: the figure stays until the next
    window is whole, so a read between two costs one clock read."""

    __slots__ = ("_read", "_since", "_start", "_window", "value")

    def __init__(self, read: Callable[[], float], window: float, now: float, value: float) -> None:
        self._read = read
        self._window = window
        self._since, self._start = now, read()
        self.value = value

    def at(self, now: float) -> float:
        elapsed = now - self._since
        if elapsed >= self._window:
            reading = self._read()
            self.value = (reading - self._start) / elapsed
            self._since, self._start = now, reading
        return self.value


class LoopLoad:
    """The share of wall time (0 to 1) the event loop's thread was running or runnable in the last whole window
    (`busy`), and the machine's idle CPUs over the last whole machine window (`spare`).

    Read it from the event loop's thread only. A read costs a clock read; the times are read once a window. The
    thread's reader, if not given, is made at the first read, on the loop's own thread.
    """

    def __init__(
        self,
        window: float = WINDOW_SECONDS,
        wall: Callable[[], float] = time.perf_counter,
        active: Callable[[], float] | None = None,
        machine_window: float = MACHINE_WINDOW_SECONDS,
        idle: Callable[[], float] | None = None,
    ) -> None:
        self._window = window
        self._clock = wall
        now = wall()
        self._busy = WindowedRate(active, window, now, 0.0) if active is not None else None
        idle = idle if idle is not None else machine_idle_seconds()
        # Unknown until a whole window is measured, or where /proc/stat cannot be read: checks are not held back.
        self._spare = WindowedRate(idle, machine_window, now, math.inf) if idle is not None else None

    def busy(self) -> float:
        now = self._clock()
        if self._busy is None:
            self._busy = WindowedRate(thread_active_seconds(), self._window, now, 0.0)
        return self._busy.at(now)

    def spare(self) -> float:
        """How many of the machine's CPUs were idle on average over the last whole machine window (inf if unknown)."""
        return self._spare.at(self._clock()) if self._spare is not None else math.inf
