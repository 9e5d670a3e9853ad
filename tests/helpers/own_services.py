"""PostgreSQL and Redis instances of a test's own, on ports of their own, for fault tests that kill things.

The shared servers on 5432/6379 are never stopped or flushed; a test that may disturb its database or Redis starts
these instead. Without the server binaries the test skips (fails under CI=true / REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError

from tests.helpers.services import REQUIRE_SERVICES, free_port


def _unavailable(what: str) -> None:
    message = f"{what} is not installed; the fault test needs its own instance"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}. CI=true/REQUIRE_SERVICES=1: fault tests must run, not skip.")
    pytest.skip(message)


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and pg_ctl."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: a root test runs them as the `postgres` system user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def own_postgres() -> Iterator[str]:
    """A fresh cluster on a free port (trust auth, 127.0.0.1 only); yields a URL of its `postgres` database."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        _unavailable("PostgreSQL (initdb, pg_ctl)")
        raise AssertionError("unreachable")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="msjx-own-pg-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    port = free_port()
    try:
        subprocess.run(
            _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _as_postgres(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                check=False,
                capture_output=True,
            )
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def own_redis() -> Iterator[str]:
    """A redis-server on a free port, without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server")
        raise AssertionError("unreachable")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(200):
            try:
                if Redis.from_url(url, socket_connect_timeout=1).ping():
                    break
            except RedisError:
                time.sleep(0.05)
        else:
            raise AssertionError("the test's own redis-server did not answer")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
