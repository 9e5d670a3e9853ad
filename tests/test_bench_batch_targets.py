"""The batch's interactive-latency bound is scored for both backends, not only printed for PostgreSQL."""

from __future__ import annotations

from typing import Any

from bench.report import targets


def _batch(postgres: dict[str, Any] | None) -> dict[str, Any]:
    batch: dict[str, Any] = {"subjects": 100_000, "seconds": 33.4, "interactive": {"p99_ratio": 1.44}}
    if postgres is not None:
        batch["postgres"] = postgres
    return {"batch": batch}


def test_the_postgresql_batch_is_held_to_the_same_bound() -> None:
    scored = targets(_batch({"vs_sqlite": 1.06, "interactive": {"p99_ratio": 5.81}}))
    assert scored["batch_interactive_p99"]["pass"] is True
    missed = scored["batch_interactive_p99_pg"]
    assert (missed["value"], missed["threshold"], missed["pass"]) == (5.81, 2.0, False)
    assert "PostgreSQL" in missed["rule"]
    assert targets(_batch({"vs_sqlite": 1.06, "interactive": {"p99_ratio": 1.86}}))["batch_interactive_p99_pg"]["pass"]


def test_a_run_without_that_batch_says_why_it_is_not_scored() -> None:
    without = targets(_batch(None))["batch_interactive_p99_pg"]
    assert (without["pass"], without["reason"]) == (None, "no PostgreSQL run")
    unprobed = targets(_batch({"vs_sqlite": 1.06}))["batch_interactive_p99_pg"]
    assert (unprobed["pass"], unprobed["reason"]) == (None, "no interactive probe")
    assert targets({})["batch_interactive_p99_pg"]["reason"] == "batch did not run"
