"""`make bench`: every scenario in one run on this machine, the targets as ratios, results in bench/results/latest.*.

Scenarios (the JSON keys): direct (wrk → credit simulator), nginx (wrk → nginx → simulator), bare_hop (wrk →
FastAPI forwarder → simulator), gateway_sqlite and gateway_pg_redis (wrk → `msjx-gateway serve` → simulator,
every request signed, nonce-checked, granted, minimized and audited), soak (the SQLite gateway paced for 10
minutes, its memory growth: bench/soak.py), interleaved (the rows the ratio targets compare, loaded in turns
while all of them run), soap, audit and batch (from bench.soap, bench.audit and bench.batch).
Each reports rps, p50_ms, p99_ms, cpu_us_per_req (CPU time of the process under test per request, from
/proc/<pid>/stat) and peak_rss_mb (its VmHWM); soak reports rss_growth_mb_per_min.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import resource
import shlex
import shutil
import signal
import string
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import load as wrk
from bench import procs, report
from bench.procs import HOST, ROOT, Server, free_port

RESULTS = ROOT / "bench" / "results"
NGINX_TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
INVOKE_PATH = "/v1/services/credit/dishonest-debtor"
UPSTREAM_PATH = "/api/credit/v1/dishonest-debtors"
# Each gateway scenario's paced run at half its maximum rate; only the SQLite one has a target (report.targets).
# The A/B rows of the whole gateway: (server, upstream client); the first is what `serve` runs.
GATEWAY_VARIANTS = (
    ("uvicorn-guarded", "wire"),
    ("uvicorn-guarded", "aiohttp"),
    ("uvicorn-guarded", "pyreqwest"),
    ("uvicorn", "wire"),
    ("granian-asgi", "wire"),
)
HALF_RATE_KEYS = {"gateway_sqlite": "half_rate", "gateway_pg_redis": "half_rate_pg_redis"}
# `interleaved`: rounds of one turn a row, and a turn's seconds (a full run; quick: 2 rounds of 2 s).
INTERLEAVED_ROUNDS = 6
INTERLEAVED_TURN_S = 3.0


@dataclass(frozen=True)
class Config:
    quick: bool
    warmup: float
    seconds: float
    half_seconds: float
    connections: int
    only: frozenset[str]
    profile: frozenset[str]
    out_dir: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        warmup, seconds, half = (1.0, 3.0, 3.0) if args.quick else (3.0, 12.0, 10.0)
        if args.seconds:
            seconds = half = float(min(max(args.seconds, 1), 60))
        return cls(
            quick=args.quick,
            warmup=warmup,
            seconds=seconds,
            half_seconds=half,
            connections=min(max(args.connections, 1), 512),
            only=frozenset(args.only.split(",")) if args.only else frozenset(),
            profile=frozenset(args.profile.split(",")) if args.profile else frozenset(),
            out_dir=Path(args.out_dir),
        )

    def wants(self, scenario: str) -> bool:
        return not self.only or scenario in self.only


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


class Skipped(Exception):
    """A scenario cannot run here; the reason goes into the JSON as {"skipped": reason}."""


@dataclass(frozen=True)
class UnderTest:
    """A started server and how to load it: `pool(label, expected_rps, seconds)` writes the requests wrk replays
    (None: wrk's own GET of `url`); `cycle` lets wrk reuse them (for a server that checks no nonce). A gateway's
    also carry its settings and the bench caller, to read its audit records."""

    server: Server
    url: str
    pool: Callable[[str, float, float], Path | None] | None = None
    cycle: bool = False
    settings: Any = None
    caller_id: str = ""


def figures(load: wrk.Load, cpu: tuple[float, float], rss_mb: float) -> dict[str, Any]:
    user, system = cpu
    result: dict[str, Any] = {
        "rps": round(load.rps, 1),
        "p50_ms": round(load.p50_ms, 3),
        "p99_ms": round(load.p99_ms, 3),
        "cpu_us_per_req": round(1e6 * (user + system) / load.requests, 1) if load.requests else None,
        "peak_rss_mb": round(rss_mb, 1),
        "cpu_system_share": round(system / (user + system), 2) if user + system else None,
        "p90_ms": round(load.p90_ms, 3),
        "max_ms": round(load.max_ms, 3),
        "requests": load.requests,
        "seconds": round(load.seconds, 2),
        "errors": load.errors,
    }
    if load.exhausted:
        result["exhausted"] = load.exhausted
    return result


class CpuSplit:
    """Who used the machine's CPUs during one measured run, in µs per answered request: the server under test, wrk,
    the simulator, PostgreSQL and Redis (their whole servers: other work on them counts too), and the rest of the
    machine (other processes, this harness). `busy_cores` is the machine's CPU time over the run's wall time."""

    def __init__(self, server: Server, simulator: Server | None) -> None:
        self.parties: dict[str, Callable[[], list[int]]] = {server.name: server.pids}
        if simulator is not None and simulator is not server:
            self.parties["simulator"] = simulator.pids
        self.parties["postgresql"] = lambda: procs.pids_named("postgres")
        self.parties["redis"] = lambda: procs.pids_named("redis-server")

    def _snapshot(self) -> dict[str, float]:
        taken = {name: sum(procs.cpu_seconds(pids())) for name, pids in self.parties.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited and been waited for
        taken["wrk"] = children.ru_utime + children.ru_stime
        taken["machine"] = procs.machine_busy_seconds()
        taken["wall"] = time.monotonic()
        return taken

    def start(self) -> None:
        self.before = self._snapshot()

    def stop(self, requests: int) -> dict[str, Any]:
        after = self._snapshot()
        used = {name: after[name] - self.before[name] for name in after}
        wall = used.pop("wall")
        machine = used.pop("machine")
        # Processes that started or ended within the run (a PostgreSQL backend) are missed: "rest" absorbs them.
        used["rest of machine"] = max(machine - sum(used.values()), 0.0)
        split: dict[str, Any] = {name: round(1e6 * seconds / requests, 1) for name, seconds in used.items()}
        split["busy_cores"] = round(machine / wall, 2) if wall else None
        return split


class LoopShares:
    """How the event loops spent one measured run, as shares of its wall time (their mean, with several workers):
    running, waiting for a CPU while runnable (the machine's other processes held both), and idle (waiting for
    I/O: a client, the upstream, the verifier's or the audit committer's answer). From the kernel's schedstat;
    None where it keeps none."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before = self._read()
        self.started = time.monotonic()

    def _read(self) -> tuple[float, float] | None:
        stats = [procs.main_thread_schedstat(pid) for pid in self.pids]
        known = [stat for stat in stats if stat is not None]
        if not known or len(known) < len(stats):
            return None
        return sum(running for running, _ in known), sum(waiting for _, waiting in known)

    def stop(self) -> dict[str, float] | None:
        after = self._read()
        wall = (time.monotonic() - self.started) * len(self.pids)
        if self.before is None or after is None or wall <= 0:
            return None
        running = (after[0] - self.before[0]) / wall
        waiting = (after[1] - self.before[1]) / wall
        return {
            "running": round(running, 3),
            "waiting_for_cpu": round(waiting, 3),
            "idle": round(max(1.0 - running - waiting, 0.0), 3),
        }


class Bench:
    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.results: dict[str, Any] = {}
        self.upstream = ""
        self.upstream_url = ""
        self.uscc = ""
        self.simulator: Server | None = None

    # --- measuring --------------------------------------------------------------------------------------------

    def measure(
        self,
        name: str,
        url: str,
        server: Server,
        pool: Callable[[str, float, float], Path | None] | None = None,
        *,
        rate: float = 0.0,
        seconds: float | None = None,
        warmup: bool = True,
        cycle: bool = False,
        expected_rps: float = 0.0,
    ) -> dict[str, Any]:
        """Warm up, then load `url` for the scenario's time, reading the server's CPU time around the run.

        `pool(label, expected_rps, seconds)` writes the requests wrk replays (None: wrk's own GET of `url`);
        `cycle` lets wrk reuse them (for a server that checks no nonce); `expected_rps` sizes the pools (default:
        the pace, else the bare hop's rate).
        """
        seconds = seconds or self.config.seconds
        expected = expected_rps or self._expected_rps(name, rate)
        if warmup:
            expected = max(expected, self.warm_up(name, url, pool, expected, cycle=cycle, rate=rate))
        main_pool = pool(name, expected, seconds) if pool else None
        split = CpuSplit(server, self.simulator)
        split.start()
        cpu_before = procs.cpu_seconds(server.pids())
        loop_pids = server.loop_pids()
        main_before = sum(procs.main_thread_cpu_seconds(pid) for pid in loop_pids)
        shares = LoopShares(loop_pids)
        load = wrk.run_wrk(
            url,
            seconds=seconds,
            connections=self.config.connections,
            requests_file=main_pool,
            cycle=cycle,
            rate=rate,
        )
        loop_shares = shares.stop()
        cpu_after = procs.cpu_seconds(server.pids())
        main_thread = sum(procs.main_thread_cpu_seconds(pid) for pid in loop_pids) - main_before
        cpu = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])
        result = figures(load, cpu, procs.peak_rss_mb(server.pids()))
        if load.requests:
            result["cpu_split_us_per_req"] = split.stop(load.requests)
        if load.requests and server.name != "nginx":  # nginx's master thread does none of the work
            # The event loop's thread: what caps one worker, whatever its other threads and processes add (with
            # several workers, their loops' sum).
            result["main_thread_cpu_us_per_req"] = round(1e6 * main_thread / load.requests, 1)
            result["event_loop_shares"] = loop_shares
        if rate:
            result["target_rate"] = round(rate, 1)
        print(
            f"  {name:<22} {result['rps']:>9,.0f} req/s  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:7.2f} ms"
            f"  cpu {result['cpu_us_per_req'] or 0:7.0f} µs/req ({100 * (result['cpu_system_share'] or 0):.0f}% sys,"
            f" main thread {result.get('main_thread_cpu_us_per_req') or 0:.0f})"
            f"  rss {result['peak_rss_mb']:6.1f} MB"
            f"  errors {result['errors']}",
            flush=True,
        )
        # `--profile half_rate` samples the paced gateway run, where a request's own costs are not shared by a batch.
        scenario, _, part = name.partition(".")
        if name in self.config.profile or (part == "gateway" and scenario in self.config.profile):
            self.profile(name, url, server, pool, expected, seconds, cycle, rate)
        return result

    def warm_up(
        self,
        name: str,
        url: str,
        pool: Callable[[str, float, float], Path | None] | None,
        expected: float,
        *,
        cycle: bool = False,
        rate: float = 0.0,
    ) -> float:
        """Load `url` for the warm-up time, unmeasured; its rate."""
        warm_pool = pool(f"{name}-warmup", expected, self.config.warmup) if pool else None
        warm = wrk.run_wrk(
            url,
            seconds=self.config.warmup,
            connections=self.config.connections,
            requests_file=warm_pool,
            cycle=cycle,
            rate=rate,
        )
        time.sleep(0.5)  # let requests cut off by the end of the warm-up drain
        return warm.rps

    def _expected_rps(self, name: str, rate: float) -> float:
        if rate:
            return rate
        hop = self.results.get("bare_hop", {})
        return float(hop.get("rps", 3000.0)) if isinstance(hop, dict) else 3000.0

    def profile(
        self,
        name: str,
        url: str,
        server: Server,
        pool: Callable[[str, float, float], Path | None] | None,
        expected: float,
        seconds: float,
        cycle: bool = False,
        rate: float = 0.0,
    ) -> None:
        """An extra run under py-spy (never the measured one: sampling takes CPU from a 2-core machine)."""
        from bench import profile

        collapsed = self.config.out_dir / f"profile-{name}.txt"
        requests_file = pool(f"{name}-profile", expected, seconds) if pool else None
        spy = profile.start(server.pid, seconds, collapsed)
        try:
            wrk.run_wrk(
                url,
                seconds=seconds,
                connections=self.config.connections,
                requests_file=requests_file,
                cycle=cycle,
                rate=rate,
            )
        finally:
            try:
                _, err = spy.communicate(timeout=seconds + 30)
            except Exception:
                spy.kill()
                raise
        if not collapsed.exists():
            print(f"  py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", flush=True)
            return
        summary = self.config.out_dir / f"profile-{name}.md"
        summary.write_text(f"# py-spy profile of {name}\n\n" + profile.summarize(collapsed), encoding="utf-8")
        print(f"  profile: {shown(summary)} (collapsed stacks: {collapsed.name})", flush=True)

    # --- scenarios --------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from simulators.enterprises import DEMO_LISTED_USCC

        self.uscc = DEMO_LISTED_USCC
        port = free_port()
        self.upstream = f"http://{HOST}:{port}"
        self.upstream_url = f"{self.upstream}{UPSTREAM_PATH}?tyshxydm={self.uscc}"
        command = [sys.executable, "-m", "simulators.credit", "--host", HOST, "--port", str(port)]
        with Server("simulator", command, self.upstream_url, log_dir=self.workdir) as simulator:
            self.simulator = simulator
            for name, scenario in (
                ("direct", self.direct),
                ("nginx", self.nginx),
                ("bare_hop", self.bare_hop),
                ("gateway_sqlite", self.gateway_sqlite),
                ("gateway_pg_redis", self.gateway_pg_redis),
                ("gateway_pg_redis_2w", self.gateway_pg_redis_2w),
                ("interleaved", self.interleaved),
                ("ab", self.ab),
                ("soak", self.soak),
            ):
                # The A/B rows add minutes: in full runs, and in quick ones only when asked for by name.
                if name == "ab" and self.config.quick and "ab" not in self.config.only:
                    continue
                if self.config.wants(name):
                    self.results[name] = self._guarded(name, scenario)
        for name in ("soap", "audit", "batch"):
            if self.config.wants(name):
                self.results[name] = self._guarded(name, lambda name=name: self.module_scenario(name))
        if self.config.wants("audit_scale"):
            self.results["audit_scale"] = self._guarded("audit_scale", self.audit_scale)
        return self.results

    def audit_scale(self) -> dict[str, Any]:
        """5,000,000 audit records take a long while to seed: a full run seeds them only when asked for by name
        (--only audit_scale) and otherwise carries the last such run's figures, marked as such; --quick seeds
        100,000."""
        from bench import audit_scale

        if self.config.quick or "audit_scale" in self.config.only:
            return audit_scale.run(self.config.quick)
        if not audit_scale.RESULTS.exists():
            raise Skipped("no run yet: `.venv/bin/python -m bench --only audit_scale` seeds 5,000,000 records")
        previous = json.loads(audit_scale.RESULTS.read_text(encoding="utf-8"))
        print(f"  carried from {shown(audit_scale.RESULTS)} ({previous.get('finished')})", flush=True)
        return {**previous, "carried_from": shown(audit_scale.RESULTS)}

    def _guarded(self, name: str, scenario: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"{name}:", flush=True)
        try:
            return scenario()
        except Skipped as skipped:
            print(f"  skipped: {skipped}", flush=True)
            return {"skipped": str(skipped)}
        except Exception as exc:  # one broken scenario must not cost the others their figures
            traceback.print_exc()
            return {"error": f"{type(exc).__name__}: {exc}"[:1000]}

    def direct(self) -> dict[str, Any]:
        assert self.simulator is not None
        return self.measure("direct", self.upstream_url, self.simulator)

    def nginx(self) -> dict[str, Any]:
        binary = shutil.which("nginx") or next(
            (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(path).exists()), None
        )
        if binary is None:
            raise Skipped("nginx is not installed (apt-get install -y nginx-light; `make bench` does it)")
        prefix = self.workdir / "nginx"
        prefix.mkdir()
        prefix.chmod(0o755)  # nginx's workers may run as another user and need their temp directories
        port = free_port()
        upstream_port = self.upstream.rsplit(":", 1)[1]
        conf = string.Template(NGINX_TEMPLATE.read_text()).substitute(
            prefix=prefix, port=port, upstream_port=upstream_port
        )
        (prefix / "nginx.conf").write_text(conf)
        url = f"http://{HOST}:{port}{UPSTREAM_PATH}?tyshxydm={self.uscc}"
        command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
        with Server("nginx", command, url, log_dir=self.workdir) as server:
            return self.measure("nginx", url, server)

    def bare_hop(self) -> dict[str, Any]:
        with self._hop_server("bare_hop") as hop:
            return self.measure("bare_hop", hop.url, hop.server, hop.pool, cycle=True)

    @contextlib.contextmanager
    def _hop_server(self, name: str) -> Iterator[UnderTest]:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from bench.presign import Presigner
        from bench.seed import PURPOSE

        port = free_port()
        command = [sys.executable, "-m", "bench.hop", "--upstream", self.upstream, "--port", str(port)]
        with Server(name, command, f"http://{HOST}:{port}/healthz", log_dir=self.workdir) as server:
            # The very requests the gateway gets, signature headers and all; the hop ignores them.
            signer = Presigner(f"{HOST}:{port}", INVOKE_PATH, self.body(PURPOSE), "hop.0", Ed25519PrivateKey.generate())
            requests_file = signer.write(self.workdir / f"{name}.requests", 1000)
            yield UnderTest(server, f"http://{HOST}:{port}/", lambda *_: requests_file, cycle=True)

    def body(self, purpose: str) -> bytes:
        return orjson.dumps({"purpose": purpose, "params": {"uscc": self.uscc}})

    def gateway_sqlite(self) -> dict[str, Any]:
        data_dir = self.workdir / "gateway-sqlite"
        result = self._gateway(self._gateway_server("gateway_sqlite", data_dir, {}))
        return result

    def gateway_pg_redis(self, workers: int = 1) -> dict[str, Any]:
        with self._pg_redis() as backend:
            if workers > 1:
                name, data_dir = f"gateway_pg_redis_{workers}w", self.workdir / "gateway-pg-2w"
                return self._gateway(self._gateway_server(name, data_dir, backend, workers))
            return self._gateway(self._gateway_server("gateway_pg_redis", self.workdir / "gateway-pg", backend))

    @contextlib.contextmanager
    def _pg_redis(self) -> Iterator[dict[str, str]]:
        """A fresh PostgreSQL database (dropped afterwards) and the shared Redis, as a gateway's backend settings."""
        from bench import seed

        try:
            database_url = asyncio.run(seed.create_database())
        except Exception as exc:  # no server, no rights: say so rather than invent figures
            raise Skipped(f"PostgreSQL at {seed.DATABASE_URL} unusable: {type(exc).__name__}: {exc}") from None
        try:
            try:
                asyncio.run(seed.check_redis())
            except Exception as exc:
                raise Skipped(f"Redis at {seed.REDIS_URL} unusable: {type(exc).__name__}: {exc}") from None
            yield {"database_url": database_url, "redis_url": seed.REDIS_URL}
        finally:
            asyncio.run(seed.drop_database(database_url))

    def gateway_pg_redis_2w(self) -> dict[str, Any]:
        """`serve --workers 2` on PostgreSQL + Redis: two worker processes (each a node with its own chain) on one
        port, against the one-worker `gateway_pg_redis` of the same run."""
        return self.gateway_pg_redis(workers=2)

    def interleaved(self) -> dict[str, Any]:
        """The rows the ratio targets compare, all running at once and loaded in turns of a few seconds, each round
        in the reverse order of the one before (docs/performance.md, "The ratio targets from interleaved turns").
        The rows above are measured a minute or more apart, and this host's price for the same work moved 1.9 ×
        between consecutive full runs. Here both sides of a ratio see the same minutes, and a drift within the run
        falls on them alike."""
        assert self.simulator is not None
        rounds, turn_seconds = (2, 2.0) if self.config.quick else (INTERLEAVED_ROUNDS, INTERLEAVED_TURN_S)
        with contextlib.ExitStack() as stack:
            parties = {"direct": UnderTest(self.simulator, self.upstream_url)}
            parties["bare_hop"] = stack.enter_context(self._hop_server("interleaved.bare_hop"))
            parties["gateway_sqlite"] = stack.enter_context(
                self._gateway_server("interleaved.gateway_sqlite", self.workdir / "interleaved-sqlite", {})
            )
            try:
                one, two = stack.enter_context(self._pg_redis()), stack.enter_context(self._pg_redis())
            except Skipped as skipped:
                print(f"  without the PostgreSQL rows: {skipped}", flush=True)
            else:
                parties["gateway_pg_redis"] = stack.enter_context(
                    self._gateway_server("interleaved.gateway_pg_redis", self.workdir / "interleaved-pg", one)
                )
                parties["gateway_pg_redis_2w"] = stack.enter_context(
                    self._gateway_server(
                        "interleaved.gateway_pg_redis_2w", self.workdir / "interleaved-pg-2w", two, workers=2
                    )
                )
            order = list(parties)
            # Every row warmed up before the first turn, so that no measured turn follows its own warm-up: in two runs
            # of four the first round, where each did, had both the highest `÷ bare_hop` and two-workers ratios.
            warm_rps = {name: 0.0 for name in order}
            for name in order:  # the hop before the gateways, whose pools its rate sizes
                party = parties[name]
                expected = max(warm_rps["bare_hop"], self._expected_rps(name, 0.0))
                warm_rps[name] = self.warm_up(f"interleaved.{name}", party.url, party.pool, expected, cycle=party.cycle)
            turns: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
            for round_ in range(rounds):
                for name in order if round_ % 2 == 0 else order[::-1]:
                    party = parties[name]
                    # Pools sized for the fastest Python row seen, the hop (no gateway outruns it): this host's
                    # speed swung 1.5 x between one turn of a row and its next, and a pool that runs out voids a row.
                    seen = [run["rps"] for run in turns[name] + turns["bare_hop"]]
                    expected = max([*seen, warm_rps[name], warm_rps["bare_hop"]])
                    figures = self.measure(
                        f"interleaved.{name}",
                        party.url,
                        party.server,
                        party.pool,
                        seconds=turn_seconds,
                        warmup=False,
                        cycle=party.cycle,
                        expected_rps=expected,
                    )
                    turns[name].append(figures)
        return report.interleaved_summary(turns, turn_seconds)

    def ab(self) -> dict[str, Any]:
        """Issue 18 item 5's comparisons, each alternative measured in turn, twice in a full run (A B C, A B C):
        - `server_floor`: a fixed answer to the gateway's requests (bench/ab_serve.py) under uvicorn + httptools,
          the same bounded by gateway/server/protocol.py, granian ASGI and granian RSGI: what the server itself costs;
        - `client_hop`: the bare hop with the credit adapter on the wire (adapters/wire.py), aiohttp and pyreqwest
          (bench/aiohttp_client.py, bench/pyreqwest_client.py);
        - `gateway_server`: the SQLite gateway as `serve` runs it (uvicorn with the guard, the wire), on aiohttp, on
          pyreqwest, without the guard, and under granian.
        """
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from bench import ab_serve
        from bench.hop import CLIENTS
        from bench.presign import Presigner
        from bench.seed import PURPOSE

        rounds = 1 if self.config.quick else 2
        out: dict[str, dict[str, list[dict[str, Any]]]] = {"server_floor": {}, "client_hop": {}, "gateway_server": {}}
        for _ in range(rounds):
            for server_kind in ab_serve.SERVERS:
                if server_kind.startswith("granian") and not ab_serve.granian_installed():
                    out["server_floor"].setdefault(server_kind, []).append({"skipped": "granian is not installed"})
                    continue
                port = free_port()
                command = [sys.executable, "-m", "bench.ab_serve", "--server", server_kind, "--app", "floor"]
                url = f"http://{HOST}:{port}/"
                granian = server_kind.startswith("granian")
                with Server(
                    f"floor-{server_kind}",
                    [*command, "--port", str(port)],
                    url,
                    log_dir=self.workdir,
                    loop_in_children=granian,
                ) as server:
                    # The gateway's own requests (POST, body, signature headers), so the guard's body path runs.
                    signer = Presigner(
                        f"{HOST}:{port}", INVOKE_PATH, self.body(PURPOSE), "floor.0", Ed25519PrivateKey.generate()
                    )
                    requests_file = signer.write(self.workdir / "floor-ab.requests", 1000)
                    figures = self.measure(
                        f"ab.floor.{server_kind}", url, server, lambda *_, f=requests_file: f, cycle=True
                    )
                out["server_floor"].setdefault(server_kind, []).append(figures)
            for client in CLIENTS:
                port = free_port()
                command = [sys.executable, "-m", "bench.hop", "--upstream", self.upstream, "--port", str(port)]
                with Server(
                    f"hop-{client}",
                    [*command, "--client", client],
                    f"http://{HOST}:{port}/healthz",
                    log_dir=self.workdir,
                ) as server:
                    signer = Presigner(
                        f"{HOST}:{port}", INVOKE_PATH, self.body(PURPOSE), "hop.0", Ed25519PrivateKey.generate()
                    )
                    requests_file = signer.write(self.workdir / "hop-ab.requests", 1000)
                    figures = self.measure(
                        f"ab.hop.{client}", f"http://{HOST}:{port}/", server, lambda *_, f=requests_file: f, cycle=True
                    )
                out["client_hop"].setdefault(client, []).append(figures)
            for server_kind, client in GATEWAY_VARIANTS:
                variant = f"{server_kind}, {client}"
                if server_kind.startswith("granian") and not ab_serve.granian_installed():
                    out["gateway_server"].setdefault(variant, []).append({"skipped": "granian is not installed"})
                    continue
                data_dir = self.workdir / f"gateway-ab-{len(list(self.workdir.glob('gateway-ab-*')))}"
                started = self._gateway_server(f"ab.gateway.{variant}", data_dir, {}, runner=server_kind, client=client)
                figures = self._gateway(started)
                out["gateway_server"].setdefault(variant, []).append(figures)
        return out

    def _gateway(self, started: contextlib.AbstractContextManager[UnderTest]) -> dict[str, Any]:
        """One gateway (`_gateway_server`) under load, then its half-rate run if it has one, named as its server."""
        from bench import seed

        with started as gateway:
            name = gateway.server.name
            result = self.measure(name, gateway.url, gateway.server, gateway.pool)
            half = HALF_RATE_KEYS.get(name)
            if half and self.config.wants(half):
                self.results[half] = self._guarded(half, lambda: self.half_rate(name, gateway, result))
        # Every answered call of every run (warm-ups included) left its record: proof the full path ran.
        result["audit_records"] = asyncio.run(seed.audit_counts(gateway.settings, gateway.caller_id))
        print(f"  audit records by decision: {result['audit_records']}", flush=True)
        return result

    @contextlib.contextmanager
    def _gateway_server(
        self,
        name: str,
        data_dir: Path,
        backend: dict[str, str],
        workers: int = 1,
        runner: str | None = None,
        client: str = "wire",
    ) -> Iterator[UnderTest]:
        """A seeded gateway, started and ready (all its workers up), with the pool of signed requests to load it;
        `runner`: under bench/ab_serve.py's server of that name instead of `serve`, its adapters on `client`."""
        from bench import seed
        from bench.presign import Presigner, pool_size
        from gateway.settings import Settings

        settings = Settings(
            data_dir=data_dir,
            upstream_urls={"credit": self.upstream},
            database_url=backend.get("database_url"),
            redis_url=backend.get("redis_url"),
            log_level="warning",
        )
        caller = asyncio.run(seed.seed(settings))
        port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("MSJX_")}
        env |= {
            "MSJX_DATA_DIR": str(data_dir),
            "MSJX_UPSTREAM_URLS": json.dumps({"credit": self.upstream}),
            "MSJX_LOG_LEVEL": "warning",
            # wrk opens every connection from one address; the server layer bounds connections per address.
            "MSJX_MAX_CONNECTIONS_PER_CLIENT": str(max(256, 2 * self.config.connections)),
            "BENCH_CLIENT": client,
        }
        if backend:
            env |= {"MSJX_DATABASE_URL": backend["database_url"], "MSJX_REDIS_URL": backend["redis_url"]}
        command = [sys.executable, "-m", "gateway.cli", "serve", "--host", HOST, "--port", str(port)]
        if workers > 1:
            command += ["--workers", str(workers)]
        if runner is not None:
            command = [sys.executable, "-m", "bench.ab_serve", "--server", runner, "--app", "gateway"]
            command += ["--port", str(port)]
        in_children = workers > 1 or (runner or "").startswith("granian")
        signer = Presigner(f"{HOST}:{port}", INVOKE_PATH, self.body(seed.PURPOSE), caller.key_id, caller.private_key)

        def pool(label: str, expected_rps: float, seconds: float) -> Path:
            return signer.write(self.workdir / f"{label}.requests", pool_size(expected_rps, seconds))

        try:
            ready = f"http://{HOST}:{port}/healthz"
            # N spawned workers each import the whole gateway: on a busy 2-core host that takes a while.
            waits = 60.0 * workers
            with Server(
                name, command, ready, log_dir=self.workdir, env=env, loop_in_children=in_children, ready_seconds=waits
            ) as server:
                if workers > 1:
                    wait_workers(server, workers)
                yield UnderTest(server, f"http://{HOST}:{port}/", pool, settings=settings, caller_id=caller.caller_id)
        finally:
            if backend:
                with contextlib.suppress(Exception):
                    asyncio.run(seed.forget_nonces(caller.key_id))

    def soak(self) -> dict[str, Any]:
        """The SQLite gateway (nonces in its own memory) under a steady paced load: 10 minutes (quick: 12 s, with a
        5 s signature window so that it still reaches the steady state), RSS sampled throughout (bench/soak.py).

        Pre-signed requests carry the time they were signed, and a signature is good for the skew window only, so
        the load runs in segments of a minute (quick: 3 s), each replaying requests signed just before it.
        """
        from bench import seed, soak
        from bench.presign import Presigner, pool_size
        from gateway.settings import Settings

        quick = self.config.quick
        # A segment must end before its first signatures leave the window.
        total, segment, skew, interval = (12.0, 3.0, 5, 0.5) if quick else (600.0, 60.0, 300, 5.0)
        rate = soak.target_rate(self.results.get("gateway_sqlite"))
        data_dir = self.workdir / "gateway-soak"
        settings = Settings(data_dir=data_dir, upstream_urls={"credit": self.upstream}, log_level="warning")
        caller = asyncio.run(seed.seed(settings))
        port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("MSJX_")}
        env |= {
            "MSJX_DATA_DIR": str(data_dir),
            "MSJX_UPSTREAM_URLS": json.dumps({"credit": self.upstream}),
            "MSJX_LOG_LEVEL": "warning",
            "MSJX_SIGNATURE_MAX_SKEW": str(skew),
        }
        command = [sys.executable, "-m", "gateway.cli", "serve", "--host", HOST, "--port", str(port)]
        signer = Presigner(f"{HOST}:{port}", INVOKE_PATH, self.body(seed.PURPOSE), caller.key_id, caller.private_key)
        url = f"http://{HOST}:{port}/"
        loads = []
        with Server("soak", command, f"http://{HOST}:{port}/healthz", log_dir=self.workdir, env=env) as server:
            sampler = soak.RssSampler(server.pid, interval)
            sampler.start()
            started = time.monotonic()
            try:
                while (left := total - (time.monotonic() - started)) >= 1:
                    seconds = min(segment, left)
                    requests_file = signer.write(self.workdir / "soak.requests", pool_size(rate, seconds))
                    load = wrk.run_wrk(
                        url,
                        seconds=seconds,
                        connections=self.config.connections,
                        requests_file=requests_file,
                        rate=rate,
                    )
                    loads.append(load)
                    print(
                        f"  soak {time.monotonic() - started:5.0f} s: {load.rps:7,.0f} req/s,"
                        f" rss {soak.rss_mb(server.pid):6.1f} MB, errors {load.errors}",
                        flush=True,
                    )
            finally:
                samples = sampler.stop()
        result = soak.summarize(samples, loads, skew, rate)
        print(
            f"  soak: rss {result['rss_start_mb']} → {result['rss_end_mb']} MB, growth from"
            f" {result['steady_from_s']:.0f} s on {result['rss_growth_mb_per_min']} MB/min",
            flush=True,
        )
        return result

    def half_rate(self, name: str, gateway: UnderTest, full: dict[str, Any]) -> dict[str, Any]:
        """The gateway and the upstream alone, both paced to half the gateway's maximum rate: the added latency."""
        from bench import seed

        assert self.simulator is not None
        if full.get("errors") or not full.get("rps"):
            raise Skipped(f"the {name} run had errors, so its maximum rate is unknown")
        rate = full["rps"] / 2
        seconds = self.config.half_seconds
        since_ms = int(time.time() * 1000)
        label = HALF_RATE_KEYS[name]
        paced = self.measure(
            f"{label}.gateway", gateway.url, gateway.server, gateway.pool, rate=rate, seconds=seconds, warmup=False
        )
        # Where the gateway's time goes, from its own audit records of this run (the answer waits for the commit).
        until_ms = int(time.time() * 1000)
        paced["inside"] = asyncio.run(seed.audit_timings(gateway.settings, gateway.caller_id, since_ms, until_ms))
        direct = self.measure(
            f"{label}.direct", self.upstream_url, self.simulator, rate=rate, seconds=seconds, warmup=False
        )
        return {
            "rate": round(rate, 1),
            name: paced,
            "direct": direct,
            "added_p50_ms": round(paced["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(paced["p99_ms"] - direct["p99_ms"], 3),
        }

    def module_scenario(self, name: str) -> dict[str, Any]:
        """bench.<name>.run(quick) when that module exists (written with the issue that builds its feature)."""
        if importlib.util.find_spec(f"bench.{name}") is None:
            raise Skipped(f"bench/{name}.py does not exist yet (its issue has not landed)")
        module = importlib.import_module(f"bench.{name}")
        outcome = module.run(self.config.quick)
        if not isinstance(outcome, dict):
            raise ValueError(f"bench.{name}.run returned {type(outcome).__name__}, not a dict")
        if name == "soap":
            outcome = {**soap_summary(outcome), **outcome}
        return outcome


def wait_workers(server: Server, workers: int, seconds: float = 120.0) -> None:
    """A supervisor answers /healthz once one worker does: wait until all of them are up (each has its verifier)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded in time
        loops = server.loop_pids()
        if len(loops) >= workers and all(procs.child_pids(pid) for pid in loops):
            time.sleep(1.0)  # their start-up (migrations checked, keys registered) ends after the fork
            return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name}: {workers} workers were not up within {seconds:g} s")


def soap_summary(outcome: dict[str, Any]) -> dict[str, Any]:
    """The scenario keys (contract) for `soap`: golden-tax through the gateway under wrk, like the REST rows."""
    loaded = outcome.get("wrk") or {}
    return {
        key: loaded.get(key)
        for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "peak_rss_mb", "requests", "errors")
    }


# --- entry point --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `with Server(...)` stops its process and temp files go."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 s warm-up and 3 s runs, a 10,000-subject batch (about 3 minutes)"
    )
    parser.add_argument("--seconds", type=float, default=0, help="seconds per measured run (default 12; quick 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run (default: all)")
    parser.add_argument("--profile", default="", help="comma-separated scenarios to also sample with py-spy")
    parser.add_argument("--out-dir", default=str(RESULTS), help="where latest.json and latest.md go")
    args = parser.parse_args(argv)
    config = Config.from_args(args)
    if wrk.wrk_path() is None:
        print("error: wrk is not installed: apt-get install -y wrk (`make bench` installs it)", file=sys.stderr)
        return 2
    config.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()
    print(
        f"msjx-gateway bench ({'quick' if config.quick else 'full'}): {config.connections} connections, "
        f"{config.warmup:g} s warm-up, {config.seconds:g} s runs; load average {load_before[0]:.2f}",
        flush=True,
    )
    with _terminate_cleanly(), tempfile.TemporaryDirectory(prefix="msjx-bench-") as tmp:
        bench = Bench(config, Path(tmp))
        scenarios = bench.run()
    results = {
        "meta": report.meta(
            config, started, load_before, shlex.join([".venv/bin/python", "-m", "bench", *(argv or sys.argv[1:])])
        ),
        **scenarios,
    }
    results["targets"] = report.targets(results)
    json_path = config.out_dir / "latest.json"
    md_path = config.out_dir / "latest.md"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(report.markdown(results), encoding="utf-8")
    print()
    print(md_path.read_text(encoding="utf-8"))
    print(f"written: {shown(json_path)}, {shown(md_path)}")
    return 0
