"""One gateway per data directory: the lock, a second `serve` refused in one line, and `demo` using the running one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.client import GatewayClient
from gateway.server.datadir_lock import DataDirBusy, DataDirLock, running_gateway
from tests.helpers.demo import start_demo
from tests.helpers.processes import CLI, stop, wait_ready
from tests.helpers.services import free_port


def test_the_lock_names_its_holder_and_refuses_a_second(tmp_path: Path) -> None:
    assert running_gateway(tmp_path) is None
    first = DataDirLock(tmp_path)
    first.acquire("0.0.0.0", 8123)
    try:
        holder = running_gateway(tmp_path)
        assert holder is not None and holder.port == 8123 and holder.pid == os.getpid()
        assert holder.url == "http://127.0.0.1:8123", "an any-address gateway is reached on loopback"
        with pytest.raises(DataDirBusy) as info:
            DataDirLock(tmp_path).acquire("127.0.0.1", 9000)
        assert "port 8123" in str(info.value) and "\n" not in str(info.value)
    finally:
        first.release()
    assert running_gateway(tmp_path) is None, "a released lock names nobody, whatever the file held"
    again = DataDirLock(tmp_path)
    again.acquire("127.0.0.1", 9001)
    again.release()


def test_a_dead_holder_leaves_no_lock(tmp_path: Path) -> None:
    """The kernel drops the flock with the process: a killed gateway does not block the next one."""
    script = (
        "import sys, os; from pathlib import Path; from gateway.server.datadir_lock import DataDirLock;"
        f"DataDirLock(Path({str(tmp_path)!r})).acquire('127.0.0.1', 8124); print('locked', flush=True);"
        "sys.stdin.read(); os._exit(9)"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    holder = running_gateway(tmp_path)
    assert holder is not None and holder.pid == child.pid and holder.port == 8124
    child.kill()
    child.wait(timeout=10)
    assert running_gateway(tmp_path) is None
    DataDirLock(tmp_path).acquire("127.0.0.1", 8125)


@pytest.mark.slow
def test_second_serve_refuses_and_demo_uses_the_running_gateway(tmp_path: Path) -> None:
    port = free_port()
    process, _ = start_demo(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    try:
        wait_ready(url)
        second = subprocess.run(
            [CLI, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"on port {port} (pid {process.pid})" in lines[0]

        demo = subprocess.run(
            [CLI, "demo", "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=240
        )
        assert demo.returncode == 0, demo.stderr + demo.stdout
        assert f"using the gateway on port {port} (pid {process.pid})" in demo.stdout
        assert f"demo against {url}" in demo.stdout and "starting `serve --demo`" not in demo.stdout
        assert "records intact" in demo.stdout

        # The running gateway is unharmed: its audit chain takes the next call.
        listing = tmp_path / "demo" / "keys" / "platform.pem"
        with GatewayClient.from_key_file(url, "platform", listing) as client:
            answer = client.invoke("credit", "dishonest-debtor", "XM-2025-001", uscc="91350213MAG6BDRC7A")
        assert answer["data"]["listed"] is True
    finally:
        stop(process)
    assert running_gateway(tmp_path) is None, "a stopped gateway frees its data dir"
