"""Time for the whole gateway: one wall clock that tests replace (`Clock`), and `periodic()` for background work.

A leaf: it imports nothing of the gateway, so every room may use it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, runtime_checkable

log = logging.getLogger("msjx.tasks")


@runtime_checkable
class Clock(Protocol):
    """Wall time, in the three shapes the gateway stores it: an aware UTC datetime, Unix seconds, Unix milliseconds.
    Durations and timeouts are not wall time: they use the event loop's monotonic clock."""

    def now(self) -> datetime: ...

    def time(self) -> float: ...

    def ms(self) -> int: ...


class SystemClock:
    """The machine's clock. `now` and `time` are the C functions themselves, not methods around them: a hot path
    that keeps `clock.time` pays nothing over calling `time.time()`."""

    now: Callable[[], datetime] = staticmethod(partial(datetime.now, UTC))
    time: Callable[[], float] = staticmethod(time.time)

    def ms(self) -> int:
        return time.time_ns() // 1_000_000


SYSTEM_CLOCK = SystemClock()


class Periodic:
    """`work` every `every` seconds in a task of its own, until `stop()`.

    A failing run is handed to `on_error` (by default logged with its traceback) and the next run comes at the next
    interval: a background task outlives a bad pass. `stop()` cancels the task and waits for it, so nothing of it
    runs once `stop()` has returned."""

    def __init__(
        self,
        name: str,
        every: float,
        work: Callable[[], Awaitable[object]],
        *,
        run_first: bool = False,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.name = name
        self.every = every
        self._work = work
        self._run_first = run_first
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> Periodic:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._repeat(), name=self.name)
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # A cancellation that lands inside the work can come out as another error (a client library's timeout
        # racing it, as asyncio.timeout on 3.11 may): the loop below would take it for a failed pass and go on, and
        # this wait would never end. The flag ends the loop whatever the cancellation became.
        self._stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _repeat(self) -> None:
        if not self._run_first:
            await asyncio.sleep(self.every)
        while not self._stopping:
            try:
                await self._work()
            except Exception as exc:  # the loop must outlive a bad pass; CancelledError (stop) goes through
                if self._stopping:
                    return
                self._failed(exc)
            await asyncio.sleep(self.every)

    def _failed(self, exc: Exception) -> None:
        if self._on_error is None:
            log.exception("%s failed", self.name)
            return
        try:
            self._on_error(exc)
        except Exception:  # a broken handler must not end the loop either
            log.exception("%s failed, and so did its error handler", self.name)


def periodic(
    name: str,
    every: float,
    work: Callable[[], Awaitable[object]],
    *,
    run_first: bool = False,
    on_error: Callable[[Exception], None] | None = None,
) -> Periodic:
    """Start running `work` every `every` seconds (first after one interval, or at once with `run_first`)."""
    return Periodic(name, every, work, run_first=run_first, on_error=on_error).start()
