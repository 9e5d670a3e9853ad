"""The interleaved rows: totals over the turns, the ratio targets from them, and round-by-round ratios."""

from __future__ import annotations

from typing import Any

from bench.report import interleaved_summary, markdown, targets


def _turn(requests: int, seconds: float, cpu: float, main: float, errors: int = 0) -> dict[str, Any]:
    return {
        "rps": round(requests / seconds, 1),
        "requests": requests,
        "seconds": seconds,
        "errors": errors,
        "cpu_us_per_req": cpu,
        "main_thread_cpu_us_per_req": main,
    }


def _summary(gateway_errors: int = 0) -> dict[str, Any]:
    return interleaved_summary(
        {
            "direct": [_turn(60_000, 3.0, 30, 30), _turn(30_000, 3.0, 40, 40)],
            "bare_hop": [_turn(15_000, 3.0, 150, 150), _turn(9_000, 3.0, 250, 250)],
            # The host is twice as slow in the second round, for every row alike.
            "gateway_sqlite": [_turn(12_000, 3.0, 200, 180), _turn(6_000, 3.0, 400, 360, gateway_errors)],
        },
        3.0,
    )


def test_totals_weigh_each_turn_by_its_requests() -> None:
    rows = _summary()["rows"]
    gateway = rows["gateway_sqlite"]
    assert (gateway["rps"], gateway["requests"], gateway["seconds"]) == (3000.0, 18_000, 6.0)
    # (200 × 12,000 + 400 × 6,000) ÷ 18,000, not the mean of the two turns (300).
    assert gateway["cpu_us_per_req"] == 266.7
    assert gateway["main_thread_cpu_us_per_req"] == 240.0
    assert gateway["turns_rps"] == [4000.0, 2000.0]


def test_ratio_targets_come_from_the_interleaved_rows_with_their_rounds() -> None:
    scored = targets({"interleaved": _summary()})
    hop = scored["gateway_vs_bare_hop_interleaved"]
    assert (hop["value"], hop["threshold"], hop["pass"]) == (0.75, 0.85, False)
    assert hop["by_round"] == [0.8, 0.667]
    assert hop["rule"].endswith("(interleaved turns)")
    direct = scored["gateway_vs_direct_interleaved"]
    assert (direct["value"], direct["pass"]) == (0.2, True)
    # No PostgreSQL rows in this run: said, not scored.
    pg = scored["two_workers_vs_one_interleaved"]
    assert pg["pass"] is None and "gateway_pg_redis_2w did not run" in pg["reason"]
    # The contiguous rows' targets are still there, and unmeasured here.
    assert scored["gateway_vs_bare_hop"]["pass"] is None


def test_a_row_with_failed_requests_is_not_scored() -> None:
    hop = targets({"interleaved": _summary(gateway_errors=3)})["gateway_vs_bare_hop_interleaved"]
    assert hop["pass"] is None and hop["reason"] == "gateway_sqlite had 3 failed requests"


def test_without_the_scenario_each_interleaved_target_says_why() -> None:
    scored = targets({"interleaved": {"skipped": "wrk is missing"}})
    assert scored["gateway_vs_bare_hop_interleaved"]["reason"] == "interleaved skipped: wrk is missing"
    assert targets({})["pg_redis_vs_sqlite_interleaved"]["reason"] == "interleaved did not run"


def test_the_report_shows_the_turns_and_the_rounds() -> None:
    results: dict[str, Any] = {
        "meta": {
            "started_at": "2026-12-07T18:00:00+00:00",
            "duration_s": 60,
            "quick": True,
            "commit": "abc1234",
            "command": ".venv/bin/python -m bench --only interleaved",
            "machine": {
                "cpus": 2,
                "cpu": "test",
                "os": "Linux",
                "python": "CPython",
                "load_average_before": [0, 0, 0],
                "load_average_after": [0, 0, 0],
                "libraries": "",
            },
            "load": {"tool": "wrk", "connections": 32, "warmup_s": 1, "run_s": 3, "nginx": "", "half_rate_run_s": 3},
        },
        "interleaved": _summary(),
    }
    results["targets"] = targets(results)
    text = markdown(results)
    assert "| gateway_sqlite | 3,000 | 267 | 240 | 18,000 | 0 | 4,000, 2,000 |" in text
    assert "- gateway_sqlite ÷ bare_hop, round by round: 0.800, 0.667" in text
    assert "| `gateway_sqlite.rps / bare_hop.rps >= 0.85 (interleaved turns)` | 0.750 | 0.85 | **MISSED** |" in text
