"""The serving process's collector settings: start-up objects frozen, young collections in larger batches."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.server import heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_settle_freezes_what_start_up_built_and_raises_the_young_threshold() -> None:
    built_at_start_up = [object() for _ in range(10)]
    _, middle, old = gc.get_threshold()
    heap.settle()
    assert gc.get_freeze_count() >= len(built_at_start_up)
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, middle, old)
    assert not any(item is built_at_start_up for item in gc.get_objects())  # frozen objects leave the collector's view
