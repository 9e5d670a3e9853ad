"""Fuzz every operation of the gateway's OpenAPI with Schemathesis, against a real server on a data dir of its own.

    python -m scripts.fuzz_api                        # the `make test` budget: 90 s of fuzzing
    MSJX_FUZZ_SECONDS=1800 python -m scripts.fuzz_api # a nightly-size run (30 min)
    python -m scripts.fuzz_api --backend postgres_redis # on a PostgreSQL and a Redis of its own

It starts `msjx-gateway serve --demo` (simulators, one demo caller of each role) on a free port, with contract
fetches disabled, inside a network namespace of its own when it can make one (root), so nothing the fuzzer makes
the gateway do can leave the machine. Schemathesis signs each request through tests/fuzz_hooks.py. The run passes
at no 5xx, no answer outside the documented schema, status codes and content types, no error body that is not
problem+json, and no traceback in the gateway's log. Exit status 0 when it passes; reports in --report-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_SECONDS = 90
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "problem_details",  # tests/fuzz_hooks.py
)
CLONE_NEWNET = 0x40000000
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # the gateway's log lines start with the time


def isolate_network() -> bool:
    """Move this process (and so its children) into a network namespace holding only loopback; False if not allowed."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return False
    # A new namespace's loopback is down: raise it (SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP), as `ip link set lo up`.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, 0x8913, request))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14s", b"lo", flags | 0x1, b""))
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the gateway exited with {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the gateway did not become ready")


def tracebacks(log: str) -> list[str]:
    """The log record each traceback in the gateway's log belongs to (a chained traceback counts once): a client's
    input must never produce one."""
    records: dict[str, None] = {}
    last_record = ""
    for line in log.splitlines():
        if LOG_RECORD.match(line):
            last_record = line
        elif line.startswith("Traceback"):
            records.setdefault(last_record or line, None)
    return list(records)


def read_report(report_dir: Path) -> dict[str, Any]:
    """Requests sent, answers by status, failed checks (check, operation) and errors from Schemathesis's NDJSON."""
    sent = 0
    statuses: Counter[int] = Counter()
    failed: set[tuple[str, str]] = set()
    operations: set[str] = set()
    errors: set[tuple[str, str, str]] = set()
    for path in sorted(report_dir.glob("ndjson-*.ndjson")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "NonFatalError" in record:
                error = record["NonFatalError"]
                errors.add((error["value"]["type"], error.get("label") or "", error["value"]["message"][:200]))
            event = record.get("ScenarioFinished")
            if event is None:
                continue
            recorder = event["recorder"]
            operations.add(recorder["label"])
            for interaction in recorder.get("interactions", {}).values():
                sent += 1
                if interaction.get("response"):
                    statuses[interaction["response"]["status_code"]] += 1
            for results in recorder.get("checks", {}).values():
                failed.update((r["name"], recorder["label"]) for r in results if r["status"] == "failure")
    return {
        "operations": len(operations),
        "requests": sent,
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "failures": [{"check": check, "operation": label} for check, label in sorted(failed)],
        "errors": [{"type": kind, "operation": label, "message": text} for kind, label, text in sorted(errors)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("MSJX_FUZZ_SECONDS", DEFAULT_SECONDS)))
    parser.add_argument("--report-dir", type=Path, default=Path("var/fuzz"))
    parser.add_argument("--seed", type=int, default=None, help="Schemathesis seed, to repeat a run")
    # One worker: Hypothesis is not thread-safe (two workers raised "AST constructor recursion depth mismatch").
    parser.add_argument("--workers", default="1")
    parser.add_argument(
        "--phases",
        default="examples,coverage,fuzzing",
        help="Schemathesis phases; `stateful` chains calls by the links it infers from the schema and Location headers",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres_redis"),
        default="sqlite",
        help="the demo's state: SQLite, or a PostgreSQL and a Redis of the run's own (what production runs on)",
    )
    args = parser.parse_args(argv)

    isolated = isolate_network()
    args.report_dir.mkdir(parents=True, exist_ok=True)
    report_dir = args.report_dir.resolve()
    for old_report in report_dir.glob("ndjson-*.ndjson"):
        old_report.unlink()
    data_dir = Path(tempfile.mkdtemp(prefix="msjx-fuzz-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("MSJX_")}
    env.update(
        MSJX_DATA_DIR=str(data_dir),
        MSJX_CONTRACT_FETCH_ALLOW="",  # upload only: the fuzzer's contract URLs are refused, never fetched
        MSJX_LOG_LEVEL="warning",
        MSJX_SIGNATURE_VERIFIER="inline",
        # The fuzzer sends hundreds of unsigned requests a minute from one address, on purpose, to test what each
        # route says to them; the flood bound that would answer 429 instead is tested in tests/test_hostile_http.py.
        MSJX_UNAUTHENTICATED_RATE="100000/minute",
        MSJX_UNAUTHENTICATED_TOTAL_RATE="100000/minute",
    )
    log_path = report_dir / "gateway.log"
    services = contextlib.ExitStack()
    if args.backend == "postgres_redis":
        # Started after the namespace is made, so inside it; the shared servers on 5432/6379 are never touched.
        from tests.helpers.own_services import own_postgres, own_redis

        env["MSJX_DATABASE_URL"] = services.enter_context(own_postgres())
        env["MSJX_REDIS_URL"] = services.enter_context(own_redis())
    print(
        f"fuzzing {url} ({args.backend}) for {args.seconds} s; network namespace: {'own' if isolated else 'shared'}",
        flush=True,
    )
    with services, log_path.open("wb") as log:
        server = subprocess.Popen(
            [str(BIN / "msjx-gateway"), "serve", "--demo", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(url, server)
            command = [
                str(BIN / "schemathesis"),
                "run",
                f"{url}/openapi.json",
                "--checks",
                ",".join(CHECKS),
                "--phases",
                args.phases,
                "--max-time",
                str(args.seconds),
                "--workers",
                args.workers,
                "--suppress-health-check",
                "all",
                "--request-timeout",
                "30",
                "--report",
                "junit,ndjson",
                "--report-dir",
                str(report_dir),
                "--no-color",
                "--generation-database",
                str(report_dir / "examples.db"),
            ]
            if args.seed is not None:
                command += ["--seed", str(args.seed)]
            fuzz_env = {
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
                "MSJX_FUZZ_CALLERS": str(data_dir / "demo" / "callers.json"),
                "MSJX_FUZZ_FILTER_URLS": "0" if isolated else "1",
                "PYTHONPATH": str(ROOT),
            }
            # In the report directory: Schemathesis keeps a cache of failures (.schemathesis/) where it runs.
            status = subprocess.run(command, env=fuzz_env, cwd=report_dir, check=False).returncode
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    shutil.rmtree(data_dir, ignore_errors=True)  # the demo's database and keys: the report keeps what matters
    found = tracebacks(log_path.read_text(errors="replace"))
    summary = {
        "schemathesis_exit": status,
        "tracebacks": len(found),
        "traceback_lines": found[:50],
        "isolated": isolated,
        "backend": args.backend,
        "seconds": args.seconds,
        **read_report(report_dir),
    }
    (report_dir / "summary.json").write_text(json.dumps(summary) + "\n")
    for line in found[:20]:
        print(f"traceback in the gateway log after: {line}")
    return 0 if status == 0 and not found else 1


if __name__ == "__main__":
    sys.exit(main())
