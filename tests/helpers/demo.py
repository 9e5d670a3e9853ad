"""`serve --demo` as a child process, and the CLI run against its data directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import CLI, stop, wait_ready
from tests.helpers.services import free_port

BIN = Path(sys.executable).parent


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


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, list[str], Path]]:
    port = free_port()
    process, lines = start_demo(tmp_path, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}", lines, tmp_path
    finally:
        stop(process)
