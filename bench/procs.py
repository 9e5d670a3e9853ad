"""Processes of the benchmark: free ports, servers started and stopped by their own handles, CPU and RSS from /proc.

Every child gets PR_SET_PDEATHSIG, so even a harness killed with SIGKILL leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (nginx's workers), from /proc/<pid>/task/*/children."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendant_pids(pid: int) -> list[int]:
    """Children, grandchildren and so on of `pid` (a supervisor's workers and their verifier processes)."""
    found: list[int] = []
    frontier = [pid]
    while frontier and len(found) < 1000:  # bounded: a process tree of a server is small
        children = [child for parent in frontier for child in child_pids(parent)]
        found += children
        frontier = children
    return found


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def pids_named(*names: str) -> list[int]:
    """Processes whose command name is one of `names` (PostgreSQL's, Redis's), from /proc/*/comm."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent on anything but idle and I/O wait since boot, from /proc/stat, in seconds."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def _user_system_ticks(stat_path: str) -> tuple[int, int]:
    stat = Path(stat_path).read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces; skip past it
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of the stat line


def cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """User and system CPU time of the processes, in seconds."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            process_user, process_system = _user_system_ticks(f"/proc/{pid}/stat")
            user += process_user
            system += process_system
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process's main thread alone: the event loop, which one worker cannot exceed."""
    with contextlib.suppress(OSError):
        return sum(_user_system_ticks(f"/proc/{pid}/task/{pid}/stat")) / CLOCK_TICKS
    return 0.0


def main_thread_schedstat(pid: int) -> tuple[float, float] | None:
    """Seconds the process's main thread has run on a CPU and has waited, runnable, for one (the kernel's
    /proc/PID/task/TID/schedstat); None where the kernel does not keep it, or the process is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as file:
            running, waiting, _slices = file.read().split()
    except (OSError, ValueError):
        return None
    return int(running) / 1e9, int(waiting) / 1e9


def peak_rss_mb(pids: Sequence[int]) -> float:
    """Sum of the processes' peak resident set (VmHWM), in MiB."""
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
                    break
    return total_kb / 1024


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded in time
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: the process exited with {process.returncode}\n{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {seconds:g} s")


class Server:
    """A server the bench starts; `with` stops it (SIGTERM, then SIGKILL after 10 s) by its own handle."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        ready_url: str,
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        ready_seconds: float = 60.0,
        loop_in_children: bool = False,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.ready_url = ready_url
        self.log = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.ready_seconds = ready_seconds
        # A supervisor (`serve --workers N`) runs no event loop itself: its workers, its direct children, do.
        self.loop_in_children = loop_in_children
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        try:
            wait_ready(self.ready_url, self.process, self.ready_seconds, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        """This server's process and all its descendants (nginx's workers; a gateway's verifier and committer; a
        supervisor's workers and theirs)."""
        return [self.pid, *descendant_pids(self.pid)]

    def loop_pids(self) -> list[int]:
        """The processes whose main thread runs the event loop that answers requests."""
        if not self.loop_in_children:
            return [self.pid]
        # multiprocessing's resource tracker is a child of the supervisor too, and answers nothing.
        return [pid for pid in child_pids(self.pid) if b"resource_tracker" not in _cmdline(pid)]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
