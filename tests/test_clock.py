"""`periodic()`: background work outlives a failing pass (logged or handed to its handler), and stops cleanly.
`SystemClock` gives one moment in the three shapes the gateway stores."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC

import pytest

from gateway.clock import SYSTEM_CLOCK, Clock, periodic
from tests.helpers.clock import ManualClock


async def test_a_failing_pass_is_logged_and_the_next_one_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    third = asyncio.Event()

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("the database is away")
        if len(runs) == 3:
            third.set()

    with caplog.at_level(logging.ERROR, logger="msjx.tasks"):
        task = periodic("test-task", 0.001, work, run_first=True)
        await asyncio.wait_for(third.wait(), 10)
        await task.stop()
    assert [r.getMessage() for r in caplog.records] == ["test-task failed"]
    assert caplog.records[0].exc_info is not None, "logged with its traceback"


async def test_failures_go_to_the_handler_and_a_broken_handler_does_not_end_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    twice = asyncio.Event()

    async def work() -> None:
        raise ValueError("bad pass")

    def handler(exc: Exception) -> None:
        seen.append(str(exc))
        if len(seen) == 2:
            twice.set()
        raise RuntimeError("handler broke")

    with caplog.at_level(logging.ERROR, logger="msjx.tasks"):
        task = periodic("test-handled", 0.001, work, on_error=handler)
        await asyncio.wait_for(twice.wait(), 10)
        await task.stop()
    assert seen[:2] == ["bad pass", "bad pass"]
    assert "test-handled failed, and so did its error handler" in caplog.messages


async def test_stop_cancels_a_pass_in_progress_and_nothing_runs_after_it() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1
        started.set()
        try:
            await asyncio.Event().wait()  # a pass that would never end by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = periodic("test-stop", 0.001, work, run_first=True)
    await asyncio.wait_for(started.wait(), 10)
    assert task.running
    await task.stop()
    assert cancelled.is_set() and not task.running
    await asyncio.sleep(0.01)
    assert runs == 1
    await task.stop()  # stopping twice is harmless


async def test_without_run_first_the_first_pass_waits_one_interval() -> None:
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1

    task = periodic("test-later", 3600, work)
    await asyncio.sleep(0)
    await task.stop()
    assert runs == 0


def test_the_system_clock_and_a_manual_one_are_clocks() -> None:
    now = SYSTEM_CLOCK.now()
    assert now.tzinfo is UTC
    assert abs(SYSTEM_CLOCK.time() - now.timestamp()) < 60
    assert abs(SYSTEM_CLOCK.ms() / 1000 - SYSTEM_CLOCK.time()) < 60
    manual = ManualClock()
    assert isinstance(SYSTEM_CLOCK, Clock) and isinstance(manual, Clock)
    before = manual.ms()
    manual.advance(seconds=1.5)
    assert manual.ms() == before + 1500
    assert manual.time() == manual.now().timestamp()


async def test_stop_ends_a_loop_whose_work_turns_the_cancellation_into_an_error() -> None:
    # As a client library's own timeout can, racing the cancellation: stop() used to wait for that loop forever.
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise TimeoutError("the library's timeout, not the cancellation") from None

    repeating = periodic("turns-cancel", 0.01, work, run_first=True, on_error=lambda exc: None)
    await started.wait()
    await asyncio.wait_for(repeating.stop(), 2)
    assert not repeating.running
