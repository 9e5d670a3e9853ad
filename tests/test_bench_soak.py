"""The soak scenario's arithmetic: the growth slope is taken once the nonce window is full, in MB a minute."""

from __future__ import annotations

import os

import pytest

from bench.load import Load
from bench.report import targets
from bench.soak import rss_mb, slope_per_minute, summarize


def test_slope_is_in_mb_a_minute() -> None:
    assert slope_per_minute([(t, 100 + t / 30) for t in range(0, 120, 5)]) == pytest.approx(2.0)
    assert slope_per_minute([(0, 1.0), (5, 1.0)]) is None


def test_growth_is_measured_after_the_window_fills() -> None:
    # 5 MB a minute for the first 300 s (the window filling), then flat: the scenario reports the flat part.
    samples = [(float(t), 150 + 5 * min(t, 300) / 60) for t in range(0, 601, 5)]
    loads = [Load(60_000, 60.0, 20.0, 30.0, 90.0, 120.0, 0, 0)] * 10
    result = summarize(samples, loads, 300, 1200.0)
    assert result["steady_from_s"] == 300
    assert result["rss_growth_mb_per_min"] == 0.0
    assert result["rss_growth_while_filling_mb_per_min"] == pytest.approx(5.0)
    assert (result["rps"], result["requests"], result["errors"]) == (1000.0, 600_000, 0)
    scored = targets({"soak": result})["soak_rss_growth"]
    assert scored["pass"] is True and scored["value"] == 0.0
    short = summarize(samples[:3], loads[:1], 5, 1200.0)
    assert targets({"soak": short})["soak_rss_growth"]["pass"] is None  # a quick soak is not scored


def test_rss_of_this_process() -> None:
    assert rss_mb(os.getpid()) > 1
