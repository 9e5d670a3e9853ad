"""Throwaway Redis and PostgreSQL servers of a test's own, on their own ports, to kill and bring back.

Fault tests never touch the shared servers: each starts its own instance here (redis-server; initdb and pg_ctl
from /usr/lib/postgresql/*/bin, run as the `postgres` user when the tests run as root, since initdb refuses root).
Without the binaries the test skips (or fails under CI=true / REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.services import REQUIRE_SERVICES, free_port


def _unavailable(what: str) -> None:
    message = f"{what} is not installed here; the fault test needs its own instance"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


def _wait_port(port: int, up: bool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not {'open' if up else 'close'} in {timeout} s")


class OwnRedis:
    """A redis-server without persistence (as many are run): a restart forgets everything it held."""

    def __init__(self, directory: Path, *options: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server")
        self.binary = str(binary)
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = list(options)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.directory), *self.options]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, up=True)

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill does; the data in memory is gone."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
            self._process = None
        _wait_port(self.port, up=False)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.kill()


class OwnPostgres:
    """A PostgreSQL cluster in a temporary directory, on its own port, to stop and start."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            _unavailable("PostgreSQL (pg_ctl)")
        self.bin = Path(found[-1]).parent
        # Not under pytest's tmp_path: the `postgres` user cannot enter root's 0700 directories.
        self.directory = Path(tempfile.mkdtemp(prefix="msjx-pg-")) / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *command: str) -> None:
        if self._as_postgres:  # initdb refuses to run as root
            command = ("runuser", "-u", "postgres", "--", *command)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def _make_parent(self) -> None:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory.parent, user.pw_uid, user.pw_gid)

    def init(self) -> None:
        self._make_parent()
        self._run(str(self.bin / "initdb"), "-D", str(self.directory), "-A", "trust", "-U", "postgres", "--no-sync")

    def standby(self) -> OwnPostgres:
        """A hot standby of this running cluster, not started: a base backup whose `-R` makes it follow this one."""
        standby = OwnPostgres()
        standby._make_parent()
        backup = (str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres")
        self._run(*backup, "-D", str(standby.directory), "-R", "-X", "stream", "--no-sync")
        return standby

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        log = str(self.directory / "server.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.directory), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.directory), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.directory.parent, ignore_errors=True)
