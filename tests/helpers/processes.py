"""Gateways and simulators as child processes: the installed command, and stopping a child for good."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

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
