"""Which HTTP client should carry the upstream hot path? httpx, aiohttp, pyreqwest, adapters/wire.py, the adapter.

Run `.venv/bin/python -m bench.upstream_client` (about 90 s; `--quick` about 30 s). It starts the credit simulator,
times each client alone (2,000 GETs by 32 tasks), then each behind a FastAPI forwarder under uvicorn (one worker,
uvloop + httptools) loaded by wrk with 32 connections, and writes bench/results/upstream_client.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "upstream_client.md"
UPSTREAM_PATH = "/api/credit/v1/dishonest-debtors"
WRK = "/usr/bin/wrk"

Fetch = Callable[[str], Awaitable[bytes]]


# --- the clients under test --------------------------------------------------------------------------------------


def available_clients() -> list[str]:
    clients = ["httpx", "aiohttp", "pyreqwest", "wire"]
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        clients.insert(1, "httpx-aiohttp")
    return [*clients, "adapter"]


@asynccontextmanager
async def open_client(kind: str, upstream: str, connections: int) -> AsyncIterator[Fetch]:
    """A function that GETs the dishonest-debtor answer for a USCC through the client `kind`, returning JSON bytes."""
    url = upstream + UPSTREAM_PATH
    if kind in ("httpx", "httpx-aiohttp"):
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        if kind == "httpx":
            client = httpx.AsyncClient(limits=limits, timeout=10.0)
        else:
            from httpx_aiohttp import HttpxAiohttpClient

            client = HttpxAiohttpClient(limits=limits, timeout=10.0)

        async def fetch_httpx(uscc: str) -> bytes:
            response = await client.get(url, params={"tyshxydm": uscc})
            if response.status_code != 200:
                raise RuntimeError(f"upstream answered {response.status_code}")
            return response.content

        async with client:
            yield fetch_httpx
    elif kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))

        async def fetch_aiohttp(uscc: str) -> bytes:
            async with session.get(url, params={"tyshxydm": uscc}) as response:
                if response.status != 200:
                    raise RuntimeError(f"upstream answered {response.status}")
                return await response.read()

        async with session:
            yield fetch_aiohttp
    elif kind == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        client = ClientBuilder().max_connections(connections).follow_redirects(False).error_for_status(False).build()

        async def fetch_pyreqwest(uscc: str) -> bytes:
            async with client.get(url).query({"tyshxydm": uscc}).build_streamed() as response:
                if response.status != 200:
                    raise RuntimeError(f"upstream answered {response.status}")
                return (await response.body_reader.bytes()).to_bytes()

        try:
            yield fetch_pyreqwest
        finally:
            await client.close()
    elif kind == "wire":
        from adapters.http import HttpClient

        http = HttpClient("credit", max_connections=connections)
        await http.start()

        async def fetch_wire(uscc: str) -> bytes:
            response = await http.request("GET", url, params={"tyshxydm": uscc})
            if response.status != 200:
                raise RuntimeError(f"upstream answered {response.status}")
            return response.body

        try:
            yield fetch_wire
        finally:
            await http.close()
    elif kind == "adapter":
        import orjson

        from adapters.credit import CreditAdapter
        from schemas.credit import CreditQuery

        adapter = CreditAdapter(upstream, timeout=10.0, max_connections=connections)
        await adapter.start()

        async def fetch_adapter(uscc: str) -> bytes:
            # The whole adapter path: input model, aiohttp, translation, output validation.
            result = await adapter.invoke("dishonest-debtor", CreditQuery(uscc=uscc))
            return orjson.dumps(result.data)

        try:
            yield fetch_adapter
        finally:
            await adapter.close()
    else:
        raise ValueError(f"unknown client {kind!r}")


# --- (a) each client alone ---------------------------------------------------------------------------------------


@dataclass
class PlainResult:
    client: str
    rates: list[float]
    errors: int
    loop_us: list[float]  # the event loop's own CPU a request (thread time): what caps one worker

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


async def plain_round(fetch: Fetch, uscc: str, requests: int, concurrency: int) -> tuple[float, int, float]:
    """`requests` GETs shared by `concurrency` tasks; return (requests per second, errors, loop CPU µs a request)."""
    remaining = requests
    errors = 0

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:  # bounded: every pass takes one of `requests`
            remaining -= 1
            try:
                await fetch(uscc)
            except Exception:
                errors += 1

    started = time.perf_counter()
    loop_cpu = time.thread_time()
    async with asyncio.timeout(60):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started), errors, 1e6 * (time.thread_time() - loop_cpu) / requests


async def measure_plain(
    clients: list[str], upstream: str, uscc: str, requests: int, concurrency: int, rounds: int
) -> list[PlainResult]:
    results = []
    for kind in clients:
        async with open_client(kind, upstream, concurrency) as fetch:
            await plain_round(fetch, uscc, 200, concurrency)  # warm-up: open the pool, fill caches
            rates, errors, loop_us = [], 0, []
            for _ in range(rounds):
                rate, failed, cpu = await plain_round(fetch, uscc, requests, concurrency)
                rates.append(rate)
                errors += failed
                loop_us.append(cpu)
        result = PlainResult(kind, rates, errors, loop_us)
        print(
            f"  plain  {kind:<14} {result.median:8.0f} req/s  (rounds: {', '.join(f'{r:.0f}' for r in rates)}),"
            f" loop CPU {statistics.median(loop_us):.0f} µs a request"
        )
        results.append(result)
    return results


# --- (b) each client behind a FastAPI forwarder ------------------------------------------------------------------


def forwarder_app(kind: str, upstream: str, connections: int) -> Any:
    """A minimal FastAPI service that answers GET /forward/{uscc} by asking the upstream through `kind`."""
    import orjson
    from fastapi import FastAPI, Response

    fetches: list[Fetch] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_client(kind, upstream, connections) as fetch:
            fetches.append(fetch)
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/forward/{uscc}")
    async def forward(uscc: str) -> Response:
        # Decode and re-encode, as a gateway that looks at the answer must; the same work for every client.
        body = orjson.dumps(orjson.loads(await fetches[0](uscc)))
        return Response(body, media_type="application/json")

    return app


def run_forwarder(kind: str, upstream: str, port: int, connections: int) -> None:
    import uvicorn

    uvicorn.run(
        forwarder_app(kind, upstream, connections),
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


@dataclass
class LoadResult:
    target: str
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def wrk_load(url: str, connections: int, seconds: int) -> LoadResult:
    command = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    total = re.search(r"(\d+) requests in", out)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        target=url,
        rate=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


async def _aiohttp_load(url: str, connections: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline and len(latencies) < 5_000_000:  # bounded in time and in count
            started = time.perf_counter()
            try:
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "requests": len(latencies),
        "errors": errors,
    }


def python_load(url: str, connections: int, seconds: int) -> LoadResult:
    """The fallback load generator without wrk: an aiohttp loop in its own process, so it has its own core."""
    command = [sys.executable, "-m", "bench.upstream_client", "--role", "load", "--url", url]
    command += ["--connections", str(connections), "--duration", str(seconds)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True, cwd=ROOT).stdout
    return LoadResult(target=url, **json.loads(out.strip().splitlines()[-1]))


def load(url: str, connections: int, seconds: int) -> LoadResult:
    if Path(WRK).exists():
        return wrk_load(url, connections, seconds)
    return python_load(url, connections, seconds)


# --- processes ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded in time
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {seconds:g} s")


@contextlib.contextmanager
def started(command: list[str], ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_ready(ready_url, process)
        yield process
    finally:
        process.terminate()  # only the process this function started, by its own handle
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- the report --------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = []
    names = ("aiohttp", "pyreqwest", "httpx", "httpx-aiohttp", "fastapi", "uvicorn", "uvloop", "httptools", "orjson")
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{name} {importlib.metadata.version(name)}")
    load_tool = "wrk (-t1)" if Path(WRK).exists() else "aiohttp load loop in a subprocess"
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "libraries": ", ".join(versions),
        "load": load_tool,
    }


def report(
    plain: list[PlainResult], forwarded: list[LoadResult], labels: list[str], args: argparse.Namespace, seconds: float
) -> str:
    info = machine()
    lines = [
        "# Upstream HTTP client: measured",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s with:",
        "",
        "```",
        f"{shlex.join(['.venv/bin/python', '-m', 'bench.upstream_client', *sys.argv[1:]])}",
        "```",
        "",
        f"- machine: {info['nproc']} CPUs (nproc), {info['cpu']}; {info['os']}",
        f"- {info['python']}; {info['libraries']}",
        "- upstream: the credit simulator (`python -m simulators.credit`, aiohttp on uvloop), answering a listed",
        "  enterprise's dishonest-debtor record (about 500 bytes of JSON) on 127.0.0.1",
        "- `wire` is `adapters/http.py`'s HttpClient (adapters/wire.py: httptools on asyncio protocols)",
        "- `adapter` is `CreditAdapter.invoke` (the wire through `adapters/http.py`, plus input/output pydantic",
        "  validation and translation): the real hot path, not a bare client",
        "",
        f"## (a) Client alone: {args.requests} GETs by {args.concurrency} concurrent tasks, {args.rounds} rounds",
        "",
        "| client | req/s (median) | rounds | event-loop CPU µs a request (median) | errors |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for result in plain:
        rounds = ", ".join(f"{rate:.0f}" for rate in result.rates)
        loop = statistics.median(result.loop_us)
        lines.append(f"| {result.client} | {result.median:,.0f} | {rounds} | {loop:.0f} | {result.errors} |")
    lines += [
        "",
        f"## (b) FastAPI forwarder under uvicorn (1 worker, uvloop, httptools), {args.connections} connections, "
        f"{args.duration} s, load by {info['load']}",
        "",
        "| behind the forwarder | req/s | p50 ms | p99 ms | requests | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, result in zip(labels, forwarded, strict=True):
        lines.append(
            f"| {label} | {result.rate:,.0f} | {result.p50_ms:.1f} | {result.p99_ms:.1f} | "
            f"{result.requests:,} | {result.errors} |"
        )
    lines += ["", *verdict(plain, dict(zip(labels, forwarded, strict=True)))]
    lines += [
        "",
        "The upstream, the forwarder and the load generator share the machine's CPUs, as in the issue's figures;",
        "compare rows with each other, not with another machine.",
        "",
    ]
    return "\n".join(lines)


def verdict(plain: list[PlainResult], forwarded: dict[str, LoadResult]) -> list[str]:
    """Say in words what this run's figures show, so the conclusion cannot drift from them."""
    rates = {label: result.rate for label, result in forwarded.items() if label in {p.client for p in plain}}
    if not rates:
        return []
    best = max(rates, key=rates.__getitem__)
    lines = [f"**Verdict of this run:** behind the forwarder, {best} carries the most ({rates[best]:,.0f} req/s)"]
    others = [f"{rates[best] / rate:.1f}× {label}" for label, rate in rates.items() if label not in (best, "adapter")]
    if others:
        lines[0] += ": " + ", ".join(others)
    if "adapter" in rates and "wire" in rates:
        share = rates["adapter"] / rates["wire"]
        lines[0] += f"; the full adapter path keeps {share:.0%} of the bare wire's rate"
    lines[0] += "."
    return lines


# --- orchestration -----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    from simulators.enterprises import DEMO_LISTED_USCC

    began = time.perf_counter()
    clients = available_clients()
    upstream_port = free_port()
    upstream = f"http://{HOST}:{upstream_port}"
    probe = f"{upstream}{UPSTREAM_PATH}?tyshxydm={DEMO_LISTED_USCC}"
    simulator = [sys.executable, "-m", "simulators.credit", "--host", HOST, "--port", str(upstream_port)]
    print(f"upstream: credit simulator on {upstream}; clients: {', '.join(clients)}")
    with started(simulator, probe):
        print(f"(a) each client alone: {args.requests} GETs, {args.concurrency} tasks, {args.rounds} rounds")
        plain = run_async(
            measure_plain(clients, upstream, DEMO_LISTED_USCC, args.requests, args.concurrency, args.rounds)
        )

        print(f"(b) FastAPI forwarders, {args.connections} connections, {args.duration} s each")
        forwarded = []
        labels = []
        load(probe, args.connections, 1)  # warm-up
        result = load(probe, args.connections, args.duration)
        print(f"  upstream alone        {result.rate:8.0f} req/s  p99 {result.p99_ms:.1f} ms")
        forwarded.append(result)
        labels.append("nothing (the upstream alone)")
        for kind in clients:
            port = free_port()
            url = f"http://{HOST}:{port}/forward/{DEMO_LISTED_USCC}"
            command = [sys.executable, "-m", "bench.upstream_client", "--role", "forwarder", "--client", kind]
            command += ["--upstream", upstream, "--port", str(port), "--connections", "100"]
            with started(command, url):
                load(url, args.connections, 1)  # warm-up
                result = load(url, args.connections, args.duration)
            print(f"  forwarder {kind:<14} {result.rate:8.0f} req/s  p99 {result.p99_ms:.1f} ms")
            forwarded.append(result)
            labels.append(kind)

    text = report(plain, forwarded, labels, args, time.perf_counter() - began)
    print()
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"written to {out}")


def run_async(coroutine: Awaitable[Any]) -> Any:
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_client", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter loads (about 30 s)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32, help="tasks of the plain-client loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32, help="connections of the load generator")
    parser.add_argument("--duration", type=int, default=6, help="seconds of load per forwarder")
    parser.add_argument("--out", default=str(RESULTS.relative_to(ROOT)), help="markdown report ('' for none)")
    # Internal roles: the same module runs as a forwarder or a load generator in a child process.
    parser.add_argument("--role", choices=("bench", "forwarder", "load"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.requests = max(1, min(args.requests, 100_000))
    args.rounds = max(1, min(args.rounds, 10))
    args.duration = max(1, min(args.duration, 60))
    if args.quick:
        args.rounds, args.duration = 1, 3

    if args.role == "forwarder":
        run_forwarder(args.client, args.upstream, args.port, args.connections)
    elif args.role == "load":
        print(json.dumps(run_async(_aiohttp_load(args.url, args.connections, args.duration))))
    else:
        run(args)


if __name__ == "__main__":
    main()
