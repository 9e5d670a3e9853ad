"""The bench's results: machine and run metadata, each target as a ratio with pass/fail, and the readable table."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import ROOT

SCENARIOS = (
    "direct",
    "nginx",
    "bare_hop",
    "gateway_sqlite",
    "gateway_pg_redis",
    "gateway_pg_redis_2w",
    "soap",
    "audit",
    "batch",
)
# The ratio targets: (key, numerator row, denominator row, the least the ratio may be).
RATIO_TARGETS = (
    ("gateway_vs_bare_hop", "gateway_sqlite", "bare_hop", 0.85),
    ("gateway_vs_direct", "gateway_sqlite", "direct", 0.11),
    ("pg_redis_vs_sqlite", "gateway_pg_redis", "gateway_sqlite", 0.7),
    ("two_workers_vs_one", "gateway_pg_redis_2w", "gateway_pg_redis", 1.4),
)
MAIN_THREAD_LIMIT_US = 250.0  # issue 18 item 5: the event loop's CPU per fully audited call
RSS_LIMIT_MB = 250.0
BATCH_RSS_LIMIT_MB = 300.0  # issue 15 item 7: the gateway's peak while a batch of 100,000 subjects runs
SOAK_GROWTH_LIMIT = 1.0  # MB a minute (issue 13 M7)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def _versions() -> str:
    names = (
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "pyreqwest",
        "aiohttp",
        "granian",
        "orjson",
        "cryptography",
    )
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def _tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "not installed"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else "unknown"


def meta(config: Any, started: float, load_before: tuple[float, float, float], command: str) -> dict[str, Any]:
    return {
        "command": command,
        "quick": config.quick,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "commit": _commit(),
        "load": {
            "tool": _tool_version(["wrk", "-v"]),
            "nginx": _tool_version(["nginx", "-v"]),
            "connections": config.connections,
            "threads": 1,
            "warmup_s": config.warmup,
            "run_s": config.seconds,
            "half_rate_run_s": config.half_seconds,
        },
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "cpu": _cpu_model(),
            "os": platform.platform(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "libraries": _versions(),
            "load_average_before": [round(value, 2) for value in load_before],
            "load_average_after": [round(value, 2) for value in os.getloadavg()],
        },
    }


def _measured(results: dict[str, Any], name: str) -> tuple[dict[str, Any] | None, str | None]:
    """The scenario's figures if they can be trusted, else why not."""
    scenario = results.get(name)
    if not isinstance(scenario, dict):
        return None, f"{name} did not run"
    if "skipped" in scenario:
        return None, f"{name} skipped: {scenario['skipped']}"
    if "error" in scenario:
        return None, f"{name} failed: {scenario['error']}"
    if scenario.get("errors"):
        return None, f"{name} had {scenario['errors']} failed requests"
    if scenario.get("exhausted"):
        return None, f"{name} ran out of pre-signed requests"
    return scenario, None


def _target(rule: str, value: float | None, threshold: float, at_least: bool, reason: str | None) -> dict[str, Any]:
    if value is None:
        return {"rule": rule, "value": None, "threshold": threshold, "pass": None, "reason": reason}
    passed = value >= threshold if at_least else value <= threshold
    return {"rule": rule, "value": round(value, 3), "threshold": threshold, "pass": passed}


def _ratio(results: dict[str, Any], top: str, bottom: str, threshold: float) -> dict[str, Any]:
    rule = f"{top}.rps / {bottom}.rps >= {threshold}"
    a, why_a = _measured(results, top)
    b, why_b = _measured(results, bottom)
    if a is None or b is None or not b.get("rps"):
        return _target(rule, None, threshold, True, why_a or why_b or f"{bottom}.rps is 0")
    target = _target(rule, a["rps"] / b["rps"], threshold, True, None)
    if a.get("cpu_us_per_req") and b.get("cpu_us_per_req"):
        # The same comparison by CPU time per request: less swayed than req/s when other work shares the CPUs.
        target["cpu_ratio"] = round(b["cpu_us_per_req"] / a["cpu_us_per_req"], 3)
    return target


def interleaved_summary(turns: dict[str, list[dict[str, Any]]], turn_seconds: float) -> dict[str, Any]:
    """The `interleaved` scenario from its turns (`measure`'s figures, round by round): each row's totals, and each
    ratio target's value over the whole run and round by round (the spread the host left within the run)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in turns.items():
        requests = sum(run["requests"] for run in runs)
        seconds = sum(run["seconds"] for run in runs)
        row: dict[str, Any] = {
            "rps": round(requests / seconds, 1) if seconds else 0.0,
            "requests": requests,
            "seconds": round(seconds, 2),
            "errors": sum(run["errors"] for run in runs),
            "turns_rps": [run["rps"] for run in runs],
            # Each turn's own figures (CPU split, the loop's shares): where a slow turn's time went.
            "turns": runs,
        }
        exhausted = sum(run.get("exhausted", 0) for run in runs)
        if exhausted:
            row["exhausted"] = exhausted
        for key in ("cpu_us_per_req", "main_thread_cpu_us_per_req"):
            if requests and all(run.get(key) is not None for run in runs):
                row[key] = round(sum(run[key] * run["requests"] for run in runs) / requests, 1)
        rows[name] = row
    rounds: dict[str, list[float]] = {}
    for key, top, bottom, _ in RATIO_TARGETS:
        if top in turns and bottom in turns:
            pairs = zip(turns[top], turns[bottom], strict=True)
            rounds[key] = [round(a["rps"] / b["rps"], 3) if b["rps"] else 0.0 for a, b in pairs]
    count = max((len(runs) for runs in turns.values()), default=0)
    return {"rounds": count, "turn_s": turn_seconds, "rows": rows, "ratio_by_round": rounds}


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each a ratio or a bound computed from this run's own figures."""
    out = {key: _ratio(results, top, bottom, threshold) for key, top, bottom, threshold in RATIO_TARGETS}
    interleaved, problem = _measured(results, "interleaved")
    for key, top, bottom, threshold in RATIO_TARGETS:
        # The same ratios from rows that ran in alternating turns (Bench.interleaved): the same minutes of the host.
        target = _ratio(interleaved["rows"] if interleaved else {}, top, bottom, threshold)
        target["rule"] += " (interleaved turns)"
        if interleaved is None:
            target["reason"] = problem
        elif key in interleaved["ratio_by_round"]:
            target["by_round"] = interleaved["ratio_by_round"][key]
        out[f"{key}_interleaved"] = target
    gateway, problem = _measured(results, "gateway_sqlite")
    rule = f"gateway_sqlite.main_thread_cpu_us_per_req <= {MAIN_THREAD_LIMIT_US:g} (event loop, a fully audited call)"
    value = gateway.get("main_thread_cpu_us_per_req") if gateway is not None else None
    out["main_thread_cpu"] = _target(rule, value, MAIN_THREAD_LIMIT_US, False, problem)
    half = results.get("half_rate")
    reason = None
    if not isinstance(half, dict) or "added_p50_ms" not in half:
        reason = (
            "half_rate did not run" if not isinstance(half, dict) else str(half.get("skipped") or half.get("error"))
        )
    elif half["gateway_sqlite"].get("errors") or half["direct"].get("errors"):
        reason = "the half-rate runs had failed requests"
    for key, bound in (("added_p50_ms", 1.5), ("added_p99_ms", 5.0)):
        rule = f"half_rate.{key} <= {bound} (gateway_sqlite minus direct, both at half the gateway's maximum rate)"
        value = None if reason or not isinstance(half, dict) else float(half[key])
        out[f"half_rate_{key}"] = _target(rule, value, bound, False, reason)
    peaks = []
    why = []
    for name in ("gateway_sqlite", "gateway_pg_redis"):
        scenario, problem = _measured(results, name)
        if scenario is None:
            why.append(problem)
        else:
            peaks.append(scenario["peak_rss_mb"])
    rule = f"max(gateway_sqlite, gateway_pg_redis).peak_rss_mb <= {RSS_LIMIT_MB:g}"
    out["peak_rss"] = _target(rule, max(peaks) if peaks else None, RSS_LIMIT_MB, False, "; ".join(filter(None, why)))
    if peaks and why:
        out["peak_rss"]["note"] = "; ".join(filter(None, why))
    soak, problem = _measured(results, "soak")
    rule = f"soak.rss_growth_mb_per_min <= {SOAK_GROWTH_LIMIT:g} (gateway RSS slope once the nonce window is full)"
    value = soak.get("rss_growth_mb_per_min") if soak is not None else None
    if soak is not None and soak.get("duration_s", 0) < 300:
        # Seconds of samples measure the allocator settling, not growth: the quick soak only shows the scenario runs.
        problem = f"a quick soak ({soak['duration_s']:.0f} s) is too short to measure growth (slope {value} MB/min)"
        value = None
    out["soak_rss_growth"] = _target(rule, value, SOAK_GROWTH_LIMIT, False, problem or "too few samples")
    out.update(_batch_targets(results))
    scale, problem = _measured(results, "audit_scale")
    for key, rule, bound, above in (
        ("subject_search_p95_ms", "audit_scale.subject_search_p95_ms <= 50", 50.0, False),
        ("range_first_page_p95_ms", "audit_scale.range_first_page_p95_ms <= 50", 50.0, False),
        # `audit verify` end to end as the CLI runs it (one process per core), wall clock: what an auditor waits for.
        ("verify_db_rps", "audit_scale.verify_db_rps >= 200000 (`audit verify` end to end, records/s)", 2e5, True),
    ):
        value = scale.get(key) if scale is not None else None
        out[f"audit_scale_{key}"] = _target(rule, value, bound, above, problem or f"{key} missing")
    return out


def _batch_targets(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 15 item 7 (and item 3's interactive p99), from the `batch` row and this run's `gateway_sqlite`."""
    batch, problem = _measured(results, "batch")
    full = batch is not None and batch.get("subjects", 0) >= 100_000
    out = {}
    seconds = batch.get("seconds") if full and batch is not None else None
    out["batch_seconds"] = _target(
        "batch.seconds <= 120 (100,000 subjects × 2 operations, SQLite)",
        seconds,
        120.0,
        False,
        problem or "a quick run: the bound is for 100,000 subjects",
    )
    out["batch_peak_rss"] = _target(
        f"batch.peak_rss_mb <= {BATCH_RSS_LIMIT_MB:g}",
        batch.get("peak_rss_mb") if batch is not None else None,
        BATCH_RSS_LIMIT_MB,
        False,
        problem,
    )
    reference = batch.get("reference_10k") if batch is not None else None
    growth = None
    if isinstance(reference, dict) and reference.get("peak_rss_mb") and batch is not None:
        growth = batch["peak_rss_mb"] / reference["peak_rss_mb"]
    out["batch_rss_flat"] = _target(
        "batch.peak_rss_mb / the 10,000-subject run's <= 1.2 (flat in N)",
        growth,
        1.2,
        False,
        problem or "no 10,000-subject reference in this run (full runs make one)",
    )
    gateway, why = _measured(results, "gateway_sqlite")
    cpu = None
    threshold = 0.0
    if batch is not None and gateway is not None and gateway.get("cpu_us_per_req"):
        threshold = round(0.5 * gateway["cpu_us_per_req"], 1)
        cpu = batch.get("cpu_us_per_subject_op")
    out["batch_cpu"] = _target(
        "batch.cpu_us_per_subject_op <= 0.5 × gateway_sqlite.cpu_us_per_req (this run's)",
        cpu,
        threshold,
        False,
        problem or why,
    )
    postgres = batch.get("postgres") if batch is not None else None
    out["batch_pg_vs_sqlite"] = _target(
        "batch: SQLite seconds / PostgreSQL seconds >= 0.7",
        postgres.get("vs_sqlite") if isinstance(postgres, dict) else None,
        0.7,
        True,
        problem or "no PostgreSQL run",
    )
    interactive = batch.get("interactive") if batch is not None else None
    out["batch_interactive_p99"] = _target(
        "batch.interactive p99 during the batch / idle p99 <= 2 (signed single calls)",
        interactive.get("p99_ratio") if isinstance(interactive, dict) else None,
        2.0,
        False,
        problem or "no interactive probe",
    )
    # The same bound for the PostgreSQL + Redis batch, whose ratio the report printed but did not score.
    probe = postgres.get("interactive") if isinstance(postgres, dict) else None
    out["batch_interactive_p99_pg"] = _target(
        "batch (PostgreSQL + Redis).interactive p99 during the batch / idle p99 <= 2 (signed single calls)",
        probe.get("p99_ratio") if isinstance(probe, dict) else None,
        2.0,
        False,
        problem or ("no interactive probe" if isinstance(postgres, dict) else "no PostgreSQL run"),
    )
    return out


AB_GROUPS = {
    "server_floor": "HTTP server alone: a fixed 500-byte answer (bench/ab_serve.py) to the gateway's signed POSTs",
    "client_hop": "Upstream client: the bare hop (FastAPI, credit adapter) on each client",
    "gateway_server": "The SQLite gateway, whole path: server, upstream client (granian, bare uvicorn: no edge bounds)",
}


def _ab_lines(ab: Any) -> list[str]:
    """The A/B rows: each alternative's runs in the order they ran (rounds alternate), req/s and CPU µs a request."""
    if not isinstance(ab, dict) or not any(isinstance(ab.get(group), dict) for group in AB_GROUPS):
        return []
    lines = ["", "A/B (issue 18 item 5), each alternative in turn, rounds alternating:"]
    for group, title in AB_GROUPS.items():
        variants = ab.get(group)
        if not isinstance(variants, dict):
            continue
        lines += [
            "",
            f"{title}:",
            "",
            "| variant | req/s | CPU µs/req (all its processes) | main thread µs/req | p99 ms | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for variant, runs in variants.items():
            skipped = next((run["skipped"] for run in runs if isinstance(run, dict) and "skipped" in run), None)
            runs = [run for run in runs if isinstance(run, dict) and "rps" in run]
            if not runs:
                lines.append(f"| {variant} | {skipped or 'not measured'} | | | | |")
                continue
            lines.append(
                f"| {variant} | {' / '.join(_cell(run['rps'], 0) for run in runs)} "
                f"| {' / '.join(_cell(run['cpu_us_per_req'], 0) for run in runs)} "
                f"| {' / '.join(_cell(run.get('main_thread_cpu_us_per_req'), 0) for run in runs)} "
                f"| {' / '.join(_cell(run['p99_ms'], 2) for run in runs)} "
                f"| {' / '.join(_cell(run.get('errors')) for run in runs)} |"
            )
    return lines


def _soak_lines(soak: Any) -> list[str]:
    if not isinstance(soak, dict) or "rss_growth_mb_per_min" not in soak:
        return []
    return [
        "",
        f"Soak: the SQLite gateway paced at {soak['target_rate']:g} req/s for {soak['duration_s']:.0f} s"
        f" ({soak['segments']} segments, signature window {soak['skew_s']} s): {soak['rps']:,.0f} req/s,"
        f" {soak['requests']:,} requests, {soak['errors']} errors; RSS {soak['rss_start_mb']} → {soak['rss_end_mb']} MB"
        f" (max {soak['rss_max_mb']}), growing {soak['rss_growth_while_filling_mb_per_min']} MB/min while the nonce"
        f" window filled and **{soak['rss_growth_mb_per_min']} MB/min** from {soak['steady_from_s']:.0f} s on.",
    ]


# --- markdown -----------------------------------------------------------------------------------------------------


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _row(name: str, scenario: Any) -> str:
    if not isinstance(scenario, dict):
        return f"| {name} | not run | | | | | | | |"
    for state in ("skipped", "error"):
        if state in scenario:
            return f"| {name} | {state}: {str(scenario[state])[:160]} | | | | | | | |"
    if "rps" not in scenario:  # a module scenario with figures of its own: see its table below
        return f"| {name} | see below | | | | | | | |"
    return (
        f"| {name} | {_cell(scenario['rps'], 0)} | {_cell(scenario['p50_ms'], 2)} | {_cell(scenario['p99_ms'], 2)} "
        f"| {_cell(scenario['cpu_us_per_req'], 0)} | {_cell(scenario.get('main_thread_cpu_us_per_req'), 0)} "
        f"| {_cell(scenario['peak_rss_mb'])} | "
        f"{_cell(scenario.get('requests'))} | {_cell(scenario.get('errors'))} |"
    )


SPLIT_PARTIES = ("simulator", "wrk", "postgresql", "redis", "rest of machine")
# event_loop_shares' keys, and their columns.
LOOP_PARTS = {"running": "loop running", "waiting_for_cpu": "loop waits for a CPU", "idle": "loop idle"}


def _percent(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f} %"


def _split_lines(results: dict[str, Any]) -> list[str]:
    """Who used the 2 CPUs in each gateway run: the gateway (all its processes), wrk, the simulator, PostgreSQL,
    Redis and everything else on the machine, in CPU µs a request, and the machine's busy cores."""
    rows = []
    for name in ("bare_hop", "gateway_sqlite", "gateway_pg_redis", "gateway_pg_redis_2w"):
        scenario = results.get(name)
        split = scenario.get("cpu_split_us_per_req") if isinstance(scenario, dict) else None
        if not split:
            continue
        cells = " | ".join(_cell(split.get(party), 0) for party in SPLIT_PARTIES)
        shares = scenario.get("event_loop_shares") or {}
        loop = " | ".join(_percent(shares.get(part)) for part in LOOP_PARTS)
        rows.append(
            f"| {name} | {_cell(split.get(name), 0)} | {cells} | {_cell(split.get('busy_cores'), 2)} | {loop} |"
        )
    if not rows:
        return []
    return [
        "",
        "CPU split (µs of CPU a request, during the measured run; PostgreSQL and Redis are whole servers, which other"
        " work may share; the rest is every other process on the machine), and how the event loop spent the run (% of"
        " its wall time, the workers' mean: running; runnable but waiting for a CPU that others held; idle, waiting"
        " for I/O):",
        "",
        "| scenario | under test | "
        + " | ".join(SPLIT_PARTIES)
        + " | busy cores | "
        + " | ".join(LOOP_PARTS.values())
        + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in SPLIT_PARTIES) + " | ---: |" + " ---: |" * len(LOOP_PARTS),
        *rows,
    ]


def _interleaved_lines(interleaved: Any) -> list[str]:
    if not isinstance(interleaved, dict) or "rows" not in interleaved:
        return []
    lines = [
        "",
        f"`interleaved`: the same rows again, all running at once and loaded in turns of {interleaved['turn_s']:g} s,"
        f" {interleaved['rounds']} rounds, each round in the reverse order of the one before; the ratio targets from"
        ' these are marked "interleaved turns" below.',
        "",
        "| scenario | req/s | CPU µs/req | main thread µs/req | requests | errors | req/s by turn |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, row in interleaved["rows"].items():
        turns = ", ".join(f"{rps:,.0f}" for rps in row["turns_rps"])
        lines.append(
            f"| {name} | {_cell(row['rps'], 0)} | {_cell(row.get('cpu_us_per_req'), 0)} "
            f"| {_cell(row.get('main_thread_cpu_us_per_req'), 0)} | {row['requests']:,} | {row['errors']} | {turns} |"
        )
    lines.append("")
    for key, top, bottom, _ in RATIO_TARGETS:
        by_round = interleaved["ratio_by_round"].get(key)
        if by_round:
            ratios = ", ".join(f"{ratio:.3f}" for ratio in by_round)
            lines.append(f"- {top} ÷ {bottom}, round by round: {ratios}")
    return lines


def _half_rate_lines(half: Any, gateway: str, seconds: float) -> list[str]:
    if isinstance(half, dict) and "rate" in half:
        lines = [
            "",
            f"`{gateway}` at half its maximum rate ({half['rate']:,.0f} req/s, paced, {seconds:g} s each): added "
            f"latency p50 {half['added_p50_ms']:.2f} ms, p99 {half['added_p99_ms']:.2f} ms.",
            "",
            "| paced run | req/s | p50 ms | p99 ms | CPU µs/req | main thread µs/req | peak RSS MB | requests"
            " | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            _row(gateway, half[gateway]),
            _row("direct", half["direct"]),
        ]
        inside = half[gateway].get("inside") or {}
        if inside:
            lines += [
                "",
                f"Inside the gateway at that rate (its audit records): arrival to audit queued p50 "
                f"{inside['duration_p50_ms']:.2f} ms / p99 {inside['duration_p99_ms']:.2f} ms, of which the upstream "
                f"call p50 {inside['upstream_p50_ms']:.2f} ms / p99 {inside['upstream_p99_ms']:.2f} ms; the rest of "
                "a client's wait is the audit commit and the HTTP hops.",
            ]
        return lines
    if isinstance(half, dict):
        return ["", f"`{gateway}` at half rate: {half.get('skipped') or half.get('error')}"]
    return []


def _soap_lines(soap: Any) -> list[str]:
    if not isinstance(soap, dict) or "sequential" not in soap:
        return []
    lines = [
        "",
        f"SOAP path ({soap.get('call')}). The `soap` row above is wrk (32 connections, pre-signed requests)"
        " against `serve --demo` (SQLite) calling the golden-tax simulator, as `gateway_sqlite` calls the credit one;"
        " its CPU and RSS are the gateway's and its committer's, not the simulators'. Below, one call at a time"
        f" from a Python client (`{soap.get('command')}`):",
        "",
        "| path | p50 ms | p99 ms | calls/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in soap["sequential"].items():
        if isinstance(row, dict):
            lines.append(
                f"| {name} | {_cell(row['p50_ms'], 2)} | {_cell(row['p99_ms'], 2)} | {_cell(row['calls_per_s'], 0)} |"
            )
    registration = soap.get("registration_50_operations") or {}
    if registration:
        lines += [
            "",
            f"Registering a WSDL of {registration['operations']} operations, cold: "
            f"{_cell(registration['cold_prepare_ms_median'], 0)} ms (median of {registration['runs']}); another node "
            f"rebuilds it from the stored contract in {_cell(registration['rebuild_from_stored_bundle_ms_median'], 0)} "
            "ms.",
        ]
    return lines


def _audit_lines(audit: Any) -> list[str]:
    if not isinstance(audit, dict) or "verify_standard_rps" not in audit:
        return []
    lines = [
        "",
        f"Audit log (`.venv/bin/python -m bench.audit`, {_cell(audit.get('records_per_run'))} records, "
        f"{audit.get('concurrency')} concurrent appends), records/s:",
        "",
        "| suite | append, SQLite | append, PostgreSQL | verify, one core | targets |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for suite in ("standard", "sm"):
        lines.append(
            f"| {suite} | {_cell(audit.get(f'append_sqlite_{suite}_rps'), 0)} "
            f"| {_cell(audit.get(f'append_pg_{suite}_rps'), 0)} | {_cell(audit.get(f'verify_{suite}_rps'), 0)} "
            "| append ≥ 20,000, verify ≥ 200,000 |"
        )
    return lines


def _audit_scale_lines(scale: Any) -> list[str]:
    if not isinstance(scale, dict) or "subject_search_p95_ms" not in scale:
        return []
    carried = f" (carried from {scale['carried_from']}, run {scale.get('finished')})" if "carried_from" in scale else ""
    return [
        "",
        f"Audit log at scale (`.venv/bin/python -m bench --only audit_scale`){carried}: {scale['rows']:,} records in"
        f" {scale['partitions']} monthly partitions on PostgreSQL, seeded through the writer at {scale['seed_rps']:,}"
        f" records/s; subject search p95 **{scale['subject_search_p95_ms']} ms**, a day's first page p95"
        f" **{scale['range_first_page_p95_ms']} ms**, `audit verify` end to end **{scale['verify_db_rps']:,}"
        f" records/s** ({scale.get('verify_workers', 1)} processes; hashing alone {scale['verify_walk_cpu_rps']:,}"
        f" records/CPU-s), **{scale['bytes_per_record']:,} bytes"
        f" per record** on disk ({scale['table_bytes_per_record']:,} table, {scale['index_bytes_per_record']:,}"
        " indexes).",
    ]


def _batch_lines(batch: Any) -> list[str]:
    if not isinstance(batch, dict) or "seconds" not in batch:
        return []
    runs = [("SQLite", batch)]
    if isinstance(batch.get("postgres"), dict):
        runs.append(("PostgreSQL + Redis", batch["postgres"]))
    lines = [
        "",
        "`batch` (bench/batch.py): one batch comparison from submission to the last result line read; credit in bulk,"
        " golden-tax over SOAP per subject; figures of the gateway process (with its children).",
        "",
        "| backend | subjects × operations | seconds | subjects/s | peak RSS MB | CPU µs per subject-operation |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, run in runs:
        lines.append(
            f"| {label} | {run['subjects']:,} × {run['operations']} | {_cell(run['seconds'], 1)} "
            f"| {_cell(run['subjects_per_s'], 0)} | {_cell(run['peak_rss_mb'])} "
            f"| {_cell(run['cpu_us_per_subject_op'], 0)} |"
        )
    lines.append(
        "| targets | 100,000 × 2 | ≤ 120 (SQLite) | PostgreSQL ≥ 0.7 × SQLite | ≤ 300, flat in N "
        "| ≤ 0.5 × `gateway_sqlite` CPU µs/req |"
    )
    reference = batch.get("reference_10k")
    if isinstance(reference, dict):
        lines += [
            "",
            f"The same run at {reference['subjects']:,} subjects (SQLite, the flatness reference): "
            f"{_cell(reference['seconds'], 1)} s, peak RSS {_cell(reference['peak_rss_mb'])} MB, "
            f"{_cell(reference['cpu_us_per_subject_op'], 0)} µs per subject-operation.",
        ]
    for label, run in runs:
        probe = run.get("interactive")
        if isinstance(probe, dict) and "idle" in probe and "batch" in probe:
            lines += [
                "",
                f"Signed single calls during the batch ({label}; {probe['calls_per_s']:g} a second, credit and"
                f" golden-tax in turn): idle p50/p99 {probe['idle']['p50_ms']}/{probe['idle']['p99_ms']} ms"
                f" ({probe['idle']['calls']} calls), during the batch {probe['batch']['p50_ms']}/"
                f"{probe['batch']['p99_ms']} ms ({probe['batch']['calls']} calls): p99 ×{probe['p99_ratio']}"
                " (target ≤ 2).",
            ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    info = results["meta"]
    machine = info["machine"]
    lines = [
        "# Benchmark: the latest run",
        "",
        f"Run {info['started_at']} ({info['duration_s']:.0f} s, {'quick' if info['quick'] else 'full'}) on commit "
        f"{info['commit']} with:",
        "",
        "```",
        info["command"],
        "```",
        "",
        f"- machine: {machine['cpus']} CPUs, {machine['cpu']}; {machine['os']}; {machine['python']}",
        f"- load average before/after: {machine['load_average_before']} / {machine['load_average_after']}",
        f"- load: {info['load']['tool']}, 1 thread, {info['load']['connections']} connections, "
        f"{info['load']['warmup_s']:g} s warm-up then {info['load']['run_s']:g} s; {info['load']['nginx']}",
        f"- {machine['libraries']}",
        "",
        "| scenario | req/s | p50 ms | p99 ms | CPU µs/req | main thread µs/req | peak RSS MB | requests | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [_row(name, results.get(name)) for name in SCENARIOS]
    lines += _split_lines(results)
    lines += _interleaved_lines(results.get("interleaved"))
    lines += _half_rate_lines(results.get("half_rate"), "gateway_sqlite", info["load"]["half_rate_run_s"])
    lines += _half_rate_lines(results.get("half_rate_pg_redis"), "gateway_pg_redis", info["load"]["half_rate_run_s"])
    lines += _ab_lines(results.get("ab"))
    lines += (
        _soap_lines(results.get("soap"))
        + _audit_lines(results.get("audit"))
        + _audit_scale_lines(results.get("audit_scale"))
    )
    lines += _soak_lines(results.get("soak"))
    lines += _batch_lines(results.get("batch"))
    lines += [
        "",
        "| target | value | threshold | result | same ratio by CPU µs/req |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for target in results["targets"].values():
        verdict = {True: "pass", False: "**MISSED**", None: f"not measured: {target.get('reason')}"}[target["pass"]]
        lines.append(
            f"| `{target['rule']}` | {_cell(target['value'], 3)} | {target['threshold']:g} | {verdict} "
            f"| {_cell(target.get('cpu_ratio'), 3)} |"
        )
    lines += [
        "",
        "CPU µs/req is the CPU time (user + system, from /proc/<pid>/stat) of the process under test divided by the",
        "requests it answered: the simulator for `direct`, nginx's master and worker for `nginx`, the forwarder or",
        "the gateway with its child processes otherwise (the signature verifier, and the SQLite committer). Peak RSS",
        "is the sum of their VmHWM. wrk, the simulator and the processes under test share the machine's CPUs:",
        "compare rows of one run with each other, not with another machine's.",
        "Main thread µs/req is the part spent on the process's main thread, the event loop: one worker cannot answer",
        "more than a million of these a second, whatever its other threads and its child processes do.",
        "",
    ]
    return "\n".join(lines)
