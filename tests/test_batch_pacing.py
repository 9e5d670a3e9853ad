"""The batches' adaptive concurrency: never more in flight than the limit, slots handed over one by one in order,
none lost to a cancelled waiter, overload halves the limit, and interactive calls under way hold a batch to its
floor."""

from __future__ import annotations

import asyncio

import pytest

from adapters.errors import UpstreamBusy
from gateway.batches.pacing import AdaptiveLimit


class Gauge:
    """Counts calls in flight and the most seen at once; each call waits until released."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.order: list[int] = []
        self.gate = asyncio.Event()

    async def call(self, number: int) -> int:
        self.now += 1
        self.most = max(self.most, self.now)
        self.order.append(number)
        try:
            await self.gate.wait()
        finally:
            self.now -= 1
        return number


async def test_never_more_in_flight_than_the_limit_and_first_come_first_served() -> None:
    limit = AdaptiveLimit(ceiling=3, start=3)
    gauge = Gauge()
    tasks = [asyncio.create_task(limit.run(lambda n=n: gauge.call(n))) for n in range(20)]
    await asyncio.sleep(0.01)
    assert gauge.now == 3
    gauge.gate.set()
    assert await asyncio.gather(*tasks) == list(range(20))
    assert gauge.most == 3
    assert gauge.order == list(range(20))
    assert limit.in_flight == 0


async def test_successes_raise_the_limit_up_to_the_ceiling() -> None:
    limit = AdaptiveLimit(ceiling=5, start=1)

    async def ok() -> None:
        await asyncio.sleep(0)

    await asyncio.gather(*(limit.run(ok) for _ in range(100)))
    assert limit.limit == 5
    assert limit.in_flight == 0


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    limit = AdaptiveLimit(ceiling=1, start=1)
    gauge = Gauge()
    first = asyncio.create_task(limit.run(lambda: gauge.call(0)))
    waiting = [asyncio.create_task(limit.run(lambda n=n: gauge.call(n))) for n in (1, 2)]
    await asyncio.sleep(0.01)
    waiting[0].cancel()
    gauge.gate.set()
    assert await first == 0
    assert await waiting[1] == 2
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert limit.in_flight == 0
    assert not limit._waiters


async def test_overload_halves_the_limit_and_the_subject_is_asked_again() -> None:
    limit = AdaptiveLimit(ceiling=8, start=8, backoff=0.001)
    answers = iter([UpstreamBusy("tax", 4, 0.1), UpstreamBusy("tax", 4, 0.1), "ok"])

    async def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await limit.run(flaky) == "ok"
    assert limit.limit == 2
    assert limit.decreases == 2


async def test_interactive_calls_under_way_hold_the_batch_to_its_floor() -> None:
    interactive = 1
    limit = AdaptiveLimit(ceiling=10, start=10, interactive=lambda: interactive, floor=2)
    gauge = Gauge()
    tasks = [asyncio.create_task(limit.run(lambda n=n: gauge.call(n))) for n in range(12)]
    await asyncio.sleep(0.01)
    assert gauge.now == 2  # the floor, not the limit of 10
    interactive = 0
    gauge.gate.set()
    await asyncio.gather(*tasks)
    assert limit.in_flight == 0
    # With no interactive call under way, the whole limit is used.
    gauge.gate.clear()
    tasks = [asyncio.create_task(limit.run(lambda n=n: gauge.call(n))) for n in range(12)]
    await asyncio.sleep(0.01)
    assert gauge.now == 10
    gauge.gate.set()
    await asyncio.gather(*tasks)


async def test_floor_zero_means_the_batch_does_not_yield() -> None:
    limit = AdaptiveLimit(ceiling=4, start=4, interactive=lambda: 5, floor=0)
    gauge = Gauge()
    tasks = [asyncio.create_task(limit.run(lambda n=n: gauge.call(n))) for n in range(6)]
    await asyncio.sleep(0.01)
    assert gauge.now == 4
    gauge.gate.set()
    await asyncio.gather(*tasks)
