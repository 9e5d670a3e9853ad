"""`msjx-gateway batch-worker` and the signals an operator or a unit sends it: SIGHUP is logged and ignored (its
default action ended the worker inside a chunk), SIGTERM stops it with exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers.processes import CLI


def _wait_for(log: Path, text: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded: a worker that never starts fails with its log
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"batch-worker exited {process.returncode}: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared: {log.read_text(errors='replace')}")


def test_sighup_is_ignored_and_sigterm_exits_zero(tmp_path: Path) -> None:
    env = {**os.environ, "MSJX_DATA_DIR": str(tmp_path / "var")}
    env.pop("MSJX_DATABASE_URL", None)
    env.pop("MSJX_REDIS_URL", None)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen([CLI, "batch-worker"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(log, "chunk(s) at a time", process)
        process.send_signal(signal.SIGHUP)
        _wait_for(log, "SIGHUP ignored: a batch worker has nothing to reload", process)
        time.sleep(0.5)
        assert process.poll() is None, log.read_text(errors="replace")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert "Traceback" not in log.read_text(errors="replace")
