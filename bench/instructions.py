"""Instructions a fully audited call costs the SQLite gateway's process, counted by valgrind's callgrind.

Run `.venv/bin/python -m bench.instructions [--calls 1000] [--connections 8]` (about 80 seconds). On a shared 2-core
host the rates and CPU seconds of `python -m bench` swing by a quarter from one minute to the next, more than most
changes to the request path move them; an instruction count does not (callgrind counts the same run the same way
whatever else the machine does). It counts only user-space instructions: system calls, cache misses and the
verifier and committer processes (not traced) are left out, so it decides between two versions of the Python work
on the event loop, not between two designs that move work elsewhere (docs/performance.md).

The gateway runs as `serve` does, under callgrind with instrumentation off until the warm-up calls are done; the
calls are the bench's own pre-signed POSTs (bench/presign.py), sent over keep-alive connections; every signature
check goes to the verifier process (MSJX_SIGNATURE_OFFLOAD_ABOVE=0), as at full load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.procs import Server, free_port

HOST = "127.0.0.1"
INVOKE_PATH = "/v1/services/credit/dishonest-debtor"
UPSTREAM_PATH = "/api/credit/v1/dishonest-debtors"
# Under callgrind the gateway imports and starts 20-50 times slower than natively.
READY_SECONDS = 600.0
_TOTALS = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


async def _send(port: int, requests: list[bytes], connections: int) -> None:
    """Send `requests` over `connections` keep-alive connections, each waiting for its answer; raise unless 200."""

    async def one_connection(share: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for request in share:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length[1])) if length else b""
                if status != b"200":
                    raise RuntimeError(f"the gateway answered {status.decode()}: {body[:300]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(one_connection(requests[i::connections]) for i in range(connections)))


def _callgrind(pid: int, *arguments: str) -> None:
    subprocess.run(["callgrind_control", *arguments, str(pid)], check=True, capture_output=True, timeout=120)


def measure(calls: int, connections: int, warmup: int, workdir: Path) -> dict[str, float]:
    from bench import seed
    from bench.presign import Presigner
    from gateway.settings import Settings
    from simulators.enterprises import DEMO_LISTED_USCC

    upstream_port = free_port()
    upstream = f"http://{HOST}:{upstream_port}"
    simulator_command = [sys.executable, "-m", "simulators.credit", "--host", HOST, "--port", str(upstream_port)]
    ready = f"{upstream}{UPSTREAM_PATH}?tyshxydm={DEMO_LISTED_USCC}"
    with Server("simulator", simulator_command, ready, log_dir=workdir):
        data_dir = workdir / "gateway"
        settings = Settings(data_dir=data_dir, upstream_urls={"credit": upstream}, log_level="warning")
        caller = asyncio.run(seed.seed(settings))
        port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("MSJX_")}
        env |= {
            "MSJX_DATA_DIR": str(data_dir),
            "MSJX_UPSTREAM_URLS": json.dumps({"credit": upstream}),
            "MSJX_LOG_LEVEL": "warning",
            "MSJX_SIGNATURE_OFFLOAD_ABOVE": "0",
        }
        out = workdir / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        body = orjson.dumps({"purpose": seed.PURPOSE, "params": {"uscc": DEMO_LISTED_USCC}})  # as bench/harness.py
        signer = Presigner(f"{HOST}:{port}", INVOKE_PATH, body, caller.key_id, caller.private_key)
        signer.check()
        started = time.monotonic()
        with Server(
            "gateway", command, f"http://{HOST}:{port}/healthz", log_dir=workdir, env=env, ready_seconds=READY_SECONDS
        ) as server:
            print(f"  gateway up under callgrind in {time.monotonic() - started:.0f} s", flush=True)
            # Signed now: a signature made before the gateway started would predate its replay memory.
            pool = signer.write(workdir / "calls.requests", warmup + calls)
            requests = [request for request in pool.read_bytes().split(b"\0") if request]
            asyncio.run(_send(port, requests[:warmup], connections))
            _callgrind(server.pid, "--instr=on")
            counted = time.monotonic()
            asyncio.run(_send(port, requests[warmup : warmup + calls], connections))
            seconds = time.monotonic() - counted
            _callgrind(server.pid, "--instr=off")
            _callgrind(server.pid, "--dump")
        totals = [
            int(match[1]) for path in workdir.glob("callgrind.out*") for match in _TOTALS.finditer(path.read_bytes())
        ]
    if not totals:
        raise RuntimeError(f"callgrind wrote no totals in {workdir}")
    instructions = max(totals)
    return {"calls": calls, "instructions_per_call": instructions / calls, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls counted (default 1000)")
    parser.add_argument("--warmup", type=int, default=200, help="calls before counting starts (default 200)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (default 8)")
    parser.add_argument("--keep", type=Path, help="keep callgrind's output and the servers' logs in this directory")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = measure(args.calls, args.connections, args.warmup, args.keep)
        print(f"  kept: {args.keep / 'callgrind.out'} (callgrind_annotate reads it)")
    else:
        with tempfile.TemporaryDirectory(prefix="msjx-instructions-") as directory:
            result = measure(args.calls, args.connections, args.warmup, Path(directory))
    print(
        f"{result['instructions_per_call']:,.0f} instructions a call in the gateway's process"
        f" ({args.calls} calls over {args.connections} connections, {result['seconds']:.0f} s under callgrind)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
