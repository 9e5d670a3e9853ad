"""The `batch` row of `make bench`: one batch comparison of N enterprises of the simulated register × 2 operations
(credit's dishonest-debtor through its bulk operation, golden-tax's tax-credit-rating over SOAP per subject), from
submission to the last result line read, through a `serve` on SQLite, then on PostgreSQL + Redis when they are up.

`.venv/bin/python -m bench.batch [--quick] [--subjects N]` prints the figures (N = 100,000; --quick 10,000).
Figures of the gateway process only (the simulators run in their own): wall seconds, peak RSS (VmHWM), and its CPU
(user + system, the verifier child included) per subject-operation.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.procs import HOST, Server, free_port
from bench.seed import seed

CLI = str(Path(sys.executable).parent / "msjx-gateway")
PURPOSE = "BENCH-BATCH"
CALLER = "bench-batch"
OPERATIONS = ("credit/dishonest-debtor", "golden-tax/tax-credit-rating")
FULL, QUICK = 100_000, 10_000
QUIET_SECONDS = 3.0
# The interactive probe's calls on the idle gateway, before the batch: 600 of them, about as many as during a
# 100,000-subject batch. With 300 the idle p99 was the third-worst call, and it moved between 10.6 and 18.9 ms from
# run to run, as much as any change to the gateway moved the ratio; with 100 it was the largest.
IDLE_SECONDS = 60.0


def _subjects_file(directory: Path, count: int) -> Path:
    from simulators.enterprises import register_uscc

    path = directory / "subjects.ndjson"
    with path.open("w") as sink:
        for index in range(count):
            sink.write(f'{{"uscc":"{register_uscc(index)}"}}\n')
    return path


class Probe(threading.Thread):
    """Signed single calls, one every `interval` seconds, alternating the two operations the batch runs (so they
    meet the same upstreams), each timed and filed under the phase it ran in (`idle`, then `batch`)."""

    def __init__(self, url: str, key_id: str, key: Any, first_subject: int, interval: float = 0.05) -> None:
        super().__init__(name="interactive-probe", daemon=True)
        self.url, self.key_id, self.key = url, key_id, key
        self.first_subject = first_subject
        self.interval = interval
        self.phase: str | None = "idle"
        self.timings: dict[str, list[float]] = {"idle": [], "batch": []}
        self.by_service: dict[str, dict[str, list[float]]] = {"idle": {}, "batch": {}}
        self.failures = 0
        self.failure_codes: dict[str, int] = {}
        self.calls = 0
        self._halt = threading.Event()

    def run(self) -> None:
        from gateway.client import GatewayClient, GatewayError
        from simulators.enterprises import register_uscc

        with GatewayClient(self.url, self.key_id, self.key, timeout=30) as client:
            number = 0
            while not self._halt.is_set():  # ends when stop() is called
                phase = self.phase
                service, operation = OPERATIONS[number % 2].split("/")
                params: dict[str, Any] = {"uscc": register_uscc(self.first_subject + number % 1000)}
                if service == "golden-tax":
                    params["year"] = 2025
                started = time.perf_counter()
                try:
                    client.invoke(service, operation, PURPOSE, **params)
                except GatewayError as error:
                    self.failures += 1
                    self.failure_codes[error.code] = self.failure_codes.get(error.code, 0) + 1
                took = time.perf_counter() - started
                if phase is not None and phase == self.phase:
                    self.timings[phase].append(took)
                    self.by_service[phase].setdefault(service, []).append(took)
                number += 1
                self.calls += 1
                self._halt.wait(max(0.0, self.interval - took))

    def stop(self) -> None:
        self._halt.set()
        self.join(60)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calls_per_s": round(1 / self.interval, 1),
            "failures": self.failures,
            "failure_codes": self.failure_codes,
        }
        for phase, times in self.timings.items():
            ordered = sorted(times)
            if not ordered:
                continue
            out[phase] = {
                "calls": len(ordered),
                "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
                "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
                "max_ms": round(ordered[-1] * 1000, 1),
            }
        for phase, services in self.by_service.items():
            if phase in out:
                # Which upstream's calls suffer: each shares its simulator (and the two cores) with the batch.
                out[phase]["p99_ms_by_service"] = {
                    service: round(sorted(times)[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 1)
                    for service, times in services.items()
                }
        if "idle" in out and "batch" in out:
            out["p99_ratio"] = round(out["batch"]["p99_ms"] / out["idle"]["p99_ms"], 2)
        return out


def _named(pids: list[int]) -> dict[str, int]:
    """The gateway's processes, each named by its command line."""
    named: dict[str, int] = {}
    for pid in pids:
        command = procs._cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()
        name = next((word for word in ("committer", "verifier", "serve", "batch-worker") if word in command), command)
        named[f"{name} ({pid})"] = pid
    return named


def _rss_by_process(pids: list[int]) -> dict[str, float]:
    """Peak RSS (MiB) of each process of the gateway: which one holds the memory."""
    return {name: round(procs.peak_rss_mb([pid]), 1) for name, pid in _named(pids).items()}


def one_run(
    count: int,
    backend: dict[str, str],
    workdir: Path,
    profile: Path | None = None,
    idle_seconds: float = 0.0,
    gateway_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Simulators and a gateway of their own, one batch, its figures. With `idle_seconds`, interactive single calls
    run first for that long on the idle gateway, then all through the batch (item 3: their p99 during a batch at
    most twice idle); their own CPU, measured in the idle phase, is taken out of the batch's."""
    from gateway.client import GatewayClient
    from gateway.settings import load_settings

    sim_env = {"MSJX_SIM_REGISTER_SIZE": str(max(count, 100_000))}
    credit_port, tax_port, port = free_port(), free_port(), free_port()
    credit = f"http://{HOST}:{credit_port}"
    tax = f"http://{HOST}:{tax_port}"
    data_dir = workdir / ("pg" if backend else "sqlite")
    urls = {"credit": credit, "golden-tax": tax}
    settings = load_settings(data_dir=data_dir, upstream_urls=urls, **backend)
    service, operation = OPERATIONS[0].split("/")
    also = [(entry.split("/")[0], entry.split("/")[1]) for entry in OPERATIONS[1:]]
    caller = asyncio.run(
        seed(
            settings,
            service,
            operation,
            caller=CALLER,
            purpose=PURPOSE,
            also=also,
            share_methods=["api", "batch"],  # single calls too: the interactive probe
            rate_limit=None,
        )
    )
    key_id, key = caller.key_id, caller.private_key
    subjects = _subjects_file(workdir, count)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env.update(
        MSJX_DATA_DIR=str(data_dir),
        MSJX_UPSTREAM_URLS=json.dumps(urls),
        MSJX_LOG_LEVEL="warning",
        **{f"MSJX_{name.upper()}": value for name, value in backend.items()},
    )
    env.update(gateway_env or {})
    credit_cmd = [sys.executable, "-m", "simulators.credit", "--host", HOST, "--port", str(credit_port)]
    tax_cmd = [sys.executable, "-m", "simulators.golden_tax", "--host", HOST, "--port", str(tax_port)]
    ready_credit = f"{credit}/api/credit/v1/dishonest-debtors?tyshxydm=91110000600037341L"
    with (
        Server("batch-credit", credit_cmd, ready_credit, log_dir=workdir, env=sim_env) as credit_server,
        Server("batch-golden-tax", tax_cmd, f"{tax}/sjjh/services/NsrxxService?wsdl", log_dir=workdir, env=sim_env)
        as tax_server,
        Server("batch-gateway", [CLI, "serve", "--port", str(port)], f"http://{HOST}:{port}/readyz",
               log_dir=workdir, env=env, ready_seconds=90) as gateway,
    ):  # fmt: skip
        gateway_url = f"http://{HOST}:{port}"
        probe = None
        probe_cpu_per_call = 0.0
        if idle_seconds > 0:
            probe = Probe(gateway_url, key_id, key, first_subject=0, interval=0.1)
            # The gateway's own background (timers, checkpoints) first, so that only the calls' CPU is taken out.
            quiet_cpu = sum(procs.cpu_seconds(gateway.pids()))
            time.sleep(QUIET_SECONDS)
            idle_cpu = sum(procs.cpu_seconds(gateway.pids()))
            background_per_s = (idle_cpu - quiet_cpu) / QUIET_SECONDS
            # The probe measures the gateway, not this process: a full collection of this process's heap (the
            # modules it imported, the reference run's leftovers) paused the probe 150 ms, 46 s into the batch,
            # and that pause was the batch phase's longest "call". Frozen, later collections walk only new objects.
            gc.collect()
            gc.freeze()
            probe.start()
            time.sleep(idle_seconds)
            probe.phase = None  # calls from here until the batch starts count in neither phase
            calls_cpu = sum(procs.cpu_seconds(gateway.pids())) - idle_cpu - background_per_s * idle_seconds
            probe_cpu_per_call = max(0.0, calls_cpu) / max(1, probe.calls)
        pids = gateway.pids()
        cpu_before = sum(procs.cpu_seconds(pids))
        # Where the machine's two cores went during the batch, process by process: the simulators stand in for
        # upstreams that would have machines of their own, and share these cores with the gateway.
        split_pids = {
            **{name: [pid] for name, pid in _named(pids).items()},
            "credit simulator": [credit_server.pid],
            "golden-tax simulator": [tax_server.pid],
            "bench (probe, client)": [os.getpid()],
        }
        if backend:  # whole servers, which other work on the machine may share
            split_pids.update(postgresql=procs.pids_named("postgres"), redis=procs.pids_named("redis-server"))
        split_before = {name: procs.cpu_seconds(group) for name, group in split_pids.items()}
        busy_before = procs.machine_busy_seconds()
        spy = None
        if profile is not None:
            from bench import profile as py_spy

            spy = py_spy.start(gateway.pid, 3600, profile)
        started = time.perf_counter()
        with GatewayClient(gateway_url, key_id, key, timeout=300) as client:
            if probe is not None:
                probe.phase = "batch"
            handle = client.batch(PURPOSE, OPERATIONS, subjects_file=subjects, params={"year": 2025})
            submitted = time.perf_counter() - started
            # The gateway's high-water mark after each phase: which one sets the peak.
            phases = {"submit": procs.peak_rss_mb([gateway.pid])}
            status = handle.wait(poll=0.5)
            if probe is not None:
                probe.phase = None
                probe.stop()
            phases["run"] = procs.peak_rss_mb([gateway.pid])
            lines = sum(1 for _ in handle.results(follow=False))
            phases["results"] = procs.peak_rss_mb([gateway.pid])
        seconds = time.perf_counter() - started
        pids = gateway.pids()
        cpu = sum(procs.cpu_seconds(pids)) - cpu_before
        machine_busy = procs.machine_busy_seconds() - busy_before
        subject_ops = count * len(OPERATIONS)
        cpu_split: dict[str, dict[str, float]] = {}
        for name, group in split_pids.items():
            (user, system), (user_before, system_before) = procs.cpu_seconds(group), split_before[name]
            cpu_split[name] = {
                "user_us": round((user - user_before) / subject_ops * 1e6, 1),
                "system_us": round((system - system_before) / subject_ops * 1e6, 1),
            }
        interactive = None
        if probe is not None:
            # The probe's calls during the batch stay in the batch's CPU: measured on the idle gateway a call cost
            # 4-7 ms (waking processes on an idle VM), about 9 times a call under load, so taking them out at that
            # price understated the batch. Left in, they add about 1 % (a call a 0.1 s against hundreds of
            # subject-operations).
            interactive = probe.figures()
            interactive["gateway_cpu_us_per_call"] = round(probe_cpu_per_call * 1e6)
        rss = procs.peak_rss_mb(pids)
        rss_by_process = _rss_by_process(pids)
        if spy is not None:
            spy.send_signal(2)  # py-spy writes what it sampled on SIGINT
            spy.wait(60)
    return {
        "subjects": count,
        "operations": len(OPERATIONS),
        "seconds": round(seconds, 2),
        "subjects_per_s": round(count / seconds, 1),
        "peak_rss_mb": round(rss, 1),
        "cpu_us_per_subject_op": round(cpu / subject_ops * 1e6, 1),
        "submit_seconds": round(submitted, 2),
        # µs a subject-operation by process, and how busy the machine's cores were (1.0: both, all the time).
        "cpu_split_us_per_subject_op": cpu_split,
        "machine_busy_share": round(machine_busy / seconds / (os.cpu_count() or 1), 3),
        "rss_by_process": rss_by_process,
        "serve_peak_rss_mb_after": {phase: round(mb, 1) for phase, mb in phases.items()},
        "state": status["state"],
        "interactive": interactive,
        "result_lines": lines,
        "outcomes": {f"{op['service']}/{op['operation']}": op["outcomes"] for op in status["operations"]},
    }


def _postgres() -> dict[str, str] | None:
    from bench.seed import check_redis, create_database

    try:
        asyncio.run(check_redis())
        url = asyncio.run(create_database())
    except Exception as exc:  # no PostgreSQL or Redis here: the SQLite figures stand alone
        print(f"  batch on PostgreSQL skipped: {type(exc).__name__}: {exc}", flush=True)
        return None
    return {"database_url": url, "redis_url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")}


def run(
    quick: bool = False,
    subjects: int | None = None,
    postgres: bool = True,
    profile: Path | None = None,
    gateway_env: dict[str, str] | None = None,
    probe: bool = True,
) -> dict[str, Any]:
    """The `batch` row (contract keys: subjects, operations, seconds, subjects_per_s, peak_rss_mb,
    cpu_us_per_subject_op), from the SQLite run; the PostgreSQL run beside it as `postgres`."""
    count = subjects or (QUICK if quick else FULL)
    with tempfile.TemporaryDirectory(prefix="msjx-bench-batch-") as directory:
        workdir = Path(directory)
        reference = None
        if count > QUICK:
            # Flat in N (item 7): the same gateway at 10,000 subjects first, in the same run.
            print(f"  batch: {QUICK:,} subjects on SQLite first, the reference for flatness in N", flush=True)
            (workdir / "reference").mkdir()
            reference = one_run(QUICK, {}, workdir / "reference", idle_seconds=0, gateway_env=gateway_env)
            print(f"  {reference}", flush=True)
        print(f"  batch: {count:,} subjects × {len(OPERATIONS)} operations on SQLite", flush=True)
        result = one_run(
            count,
            {},
            workdir,
            profile / "batch-sqlite.txt" if profile else None,
            idle_seconds=IDLE_SECONDS if probe else 0,
            gateway_env=gateway_env,
        )
        if reference is not None:
            result["reference_10k"] = {
                key: reference[key] for key in ("subjects", "seconds", "peak_rss_mb", "cpu_us_per_subject_op")
            }
        print(f"  {result}", flush=True)
        backend = _postgres() if postgres else None
        if backend is not None:
            from bench.seed import drop_database

            try:
                print("  batch on PostgreSQL + Redis", flush=True)
                pg = one_run(
                    count,
                    backend,
                    workdir,
                    profile / "batch-postgres.txt" if profile else None,
                    idle_seconds=IDLE_SECONDS if probe else 0,
                    gateway_env=gateway_env,
                )
                pg["vs_sqlite"] = round(result["seconds"] / pg["seconds"], 3)
                result["postgres"] = pg
                print(f"  {pg}", flush=True)
            finally:
                asyncio.run(drop_database(backend["database_url"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} subjects instead of {FULL:,}")
    parser.add_argument("--subjects", type=int, default=None)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--profile", type=Path, default=None, help="a folder: sample the gateway with py-spy")
    parser.add_argument(
        "--set", action="append", default=[], metavar="MSJX_NAME=VALUE", help="a setting of the gateway (A/B runs)"
    )
    parser.add_argument("--no-probe", action="store_true", help="no interactive single calls (item 3) alongside")
    args = parser.parse_args()
    gateway_env = dict(item.split("=", 1) for item in args.set)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    result = run(args.quick, args.subjects, not args.no_postgres, args.profile, gateway_env, not args.no_probe)
    if args.profile is not None:
        from bench import profile

        for collapsed in sorted(args.profile.glob("batch-*.txt")):
            collapsed.with_suffix(".md").write_text(profile.summarize(collapsed), encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
