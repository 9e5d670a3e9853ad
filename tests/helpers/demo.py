"""`serve --demo` as a child process, and the CLI run against its data directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import CLI, stop
from tests.helpers.services import free_port

BIN = Path(sys.executable).parent


def run_cli(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MSJX_DATA_DIR": str(data_dir)}
    env.pop("MSJX_DATABASE_URL", None)
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
    return result


def start_demo(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for name in ("MSJX_DATABASE_URL", "MSJX_REDIS_URL", "MSJX_DATA_DIR"):
        env.pop(name, None)
    process = subprocess.Popen(
        [CLI, "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"serve --demo exited early: {process.stderr.read() if process.stderr else ''}")
        lines.append(line.rstrip("\n"))
        if "msjx-gateway call" in line:
            break
    return process, lines


def wait_ready(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway never became ready")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, list[str], Path]]:
    port = free_port()
    process, lines = start_demo(tmp_path, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}", lines, tmp_path
    finally:
        stop(process)
