"""One gateway per data directory: `serve` holds an flock on <data_dir>/gateway.lock, which names its pid and port.

Two gateways on one data directory append to the same audit chain (same node id, same keys) and break each other;
the lock makes the second refuse at start, and lets `demo` find the running one. The kernel drops an flock when
its process dies, so a crashed gateway never leaves a stale lock behind: the file's content is only read while
the lock is held by someone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import MsjxError

LOCK_FILE = "gateway.lock"
_ANY_ADDRESS = {"", "0.0.0.0", "::"}  # noqa: S104 - compared against, never bound


@dataclass(frozen=True)
class Holder:
    """The gateway holding a data directory; port 0 while it has not written its address yet."""

    pid: int
    host: str
    port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in _ANY_ADDRESS else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        where = f"on port {self.port}" if self.port else "starting up"
        return f"the gateway {where}" + (f" (pid {self.pid})" if self.pid else "")


class DataDirBusy(MsjxError):
    """Another process serves this data directory."""

    def __init__(self, data_dir: Path, holder: Holder) -> None:
        self.data_dir = data_dir
        self.holder = holder
        super().__init__(
            f"data dir {data_dir} is in use by {holder.describe()}: stop it, call it"
            f" (--url {holder.url}), or give this one another --data-dir"
        )


class DataDirLock:
    """Held for the life of `serve`; `release` (or the process ending) frees the directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, host: str, port: int) -> None:
        """Take the lock and write who holds it; DataDirBusy when another process holds it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirBusy(self.data_dir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host, "port": port}).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # emptied so a reader never takes an old port for a live one
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def running_gateway(data_dir: Path) -> Holder | None:
    """The gateway serving `data_dir` now, or None when no process holds its lock."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody held it: whatever the file says is history
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return Holder(pid=int(data.get("pid", 0)), host=str(data.get("host", "")), port=int(data.get("port", 0)))
    except (ValueError, TypeError, AttributeError):  # written half-way by a gateway that is starting
        return Holder(pid=0, host="", port=0)
