"""Gateways and simulators as child processes: the installed command, running it, waiting for readiness, stopping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLI = str(Path(sys.executable).parent / "msjx-gateway")


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGINT (the child drains and writes its final checkpoint), then SIGKILL if it is still there after 20 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def run_cli(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`msjx-gateway ARGS` on this data directory and its embedded SQLite; exit status checked unless told not to."""
    env = {**os.environ, "MSJX_DATA_DIR": str(data_dir)}
    env.pop("MSJX_DATABASE_URL", None)
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}{result.stdout}")
    return result


def wait_ready(url: str, process: subprocess.Popen[str] | None = None, log: Path | None = None) -> None:
    """Until GET /readyz answers 200; a child that exits first fails with its log. 60 s bound a hang, no more."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {log.read_text() if log else ''}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway never became ready")
