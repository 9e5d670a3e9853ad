"""`serve --workers N`: a supervisor binds the port once and runs N gateway processes on that one socket.

Each worker is a node with its own audit chain, `<node-id>-<i>`, and its own checkpoint key. The supervisor restarts
a worker that dies, drains every worker on SIGTERM/SIGINT (each signs its chain's head as it stops), and on SIGHUP
restarts them one at a time: the socket stays open in the supervisor, so a connection waits in the kernel's queue
for the next worker instead of being refused.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

import uvicorn

from gateway.metrics import MULTIPROCESS_DIR
from gateway.settings import Settings
from schemas.errors import MsjxError

log = logging.getLogger("msjx.workers")
READY_SECONDS = 120.0  # a worker migrates nothing (the supervisor did) but may wait for PostgreSQL and Redis
QUICK_DEATH_SECONDS = 10.0  # a worker that dies sooner than this is restarted after a growing pause
MAX_PAUSE_SECONDS = 30.0
ACCEPTED_GRACE_SECONDS = 0.5  # for a connection accepted just before a worker stops to send its request
_SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: no event loop or connection copied by fork


class WorkersRefused(MsjxError):
    """`--workers` cannot run with these settings; the message says why in one line."""


def check_workers(settings: Settings, workers: int) -> None:
    """More than one worker needs state every process sees: PostgreSQL and Redis."""
    if workers < 1:
        raise WorkersRefused(f"--workers must be at least 1, not {workers}")
    if workers == 1:
        return
    if settings.is_sqlite:
        raise WorkersRefused(
            f"--workers {workers} needs PostgreSQL (MSJX_DATABASE_URL) and Redis (MSJX_REDIS_URL): on SQLite the audit"
            " committer and the in-process nonce, quota and breaker state serve one process only; use --workers 1"
        )
    if not settings.redis_url:
        raise WorkersRefused(
            f"--workers {workers} needs Redis (MSJX_REDIS_URL): without it nonces, quotas and breakers are kept in"
            " each process, so a replayed request or an exhausted quota would pass on another worker"
        )


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker `index`'s settings: node id `<node-id>-<index>`, so its chain, witness file and key are its own."""
    return settings.model_copy(update={"node_id": f"{settings.node_id}-{index}", "worker_index": index})


def bind(host: str, port: int) -> socket.socket:
    """The socket every worker accepts on, bound once, here, and not listening yet: until `listen`, a connection to
    the port is refused, as it was before `serve` started (nginx and TCP health checks take an open port for ready)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def listen(sock: socket.socket) -> None:
    """Open the bound socket to connections, for workers started after this (they inherit it)."""
    sock.listen(2048)
    sock.set_inheritable(True)


def run_worker(settings: Settings, sock: socket.socket, ready: Event, server_options: dict[str, Any]) -> None:
    """A worker process: the same uvicorn server as `serve`, on the supervisor's socket."""
    from gateway.app import create_app
    from gateway.server import heap
    from gateway.server.logs import configure_logging
    from gateway.server.protocol import guarded_protocol

    # Its own process group: a Ctrl-C at the terminal reaches the supervisor alone, which stops each worker once (a
    # second signal would make uvicorn drop the calls in flight instead of draining them).
    os.setpgrp()
    configure_logging(settings.log_level)
    _stop_when_orphaned()

    def on_ready() -> None:
        heap.settle()
        ready.set()

    config = uvicorn.Config(
        create_app(settings, on_ready=on_ready),
        log_level=settings.log_level,
        **{**server_options, "http": guarded_protocol(settings)},
    )
    DrainingServer(config).run(sockets=[sock])


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but a stopping worker stops accepting first and waits a moment before uvicorn closes the
    connections that have no request in progress: one accepted just before the stop has sent its request by then
    and is answered, while new connections already go to the other workers on the shared socket."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await asyncio.sleep(ACCEPTED_GRACE_SECONDS)
        await super().shutdown(sockets)


def _stop_when_orphaned() -> None:
    """A supervisor killed with -9 cannot stop its workers: each notices and drains itself as if told to stop."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


@dataclass
class Worker:
    index: int
    settings: Settings
    process: BaseProcess | None = None
    ready: Event | None = None
    started: float = 0.0
    pause: float = 0.0
    restart_at: float = 0.0

    @property
    def name(self) -> str:
        return self.settings.node_id


@dataclass
class Supervisor:
    """Runs `settings`' workers on `sock` until SIGTERM or SIGINT; `announce` runs once all are ready."""

    settings: Settings
    count: int
    sock: socket.socket
    server_options: dict[str, Any]
    announce: Callable[[], None] = lambda: None
    workers: list[Worker] = field(default_factory=list)
    _stopping: bool = False
    _rolling: bool = False

    def run(self) -> None:
        previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._roll)
        metrics_dir = self._metrics_dir()
        try:
            self.workers = [Worker(index, worker_settings(self.settings, index)) for index in range(self.count)]
            for worker in self.workers:
                self._start(worker)
            if self._wait_ready(self.workers):
                host, port = self.sock.getsockname()[:2]
                names = ", ".join(worker.name for worker in self.workers)
                log.info("%d workers ready: %s, serving http://%s:%d", self.count, names, host, port)
                self.announce()
            while not self._stopping:
                time.sleep(0.2)
                if self._rolling:
                    self._rolling = False
                    self._rolling_restart()
                self._restart_dead()
        finally:
            self._stop_all()
            for number, handler in previous.items():
                signal.signal(number, handler)
            os.environ.pop(MULTIPROCESS_DIR, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _metrics_dir(self) -> str:
        """A fresh directory for the workers' metric files (prometheus_client's multiprocess mode): a scrape that
        reaches any worker reports the totals of all of them, those of workers that died included. The workers
        inherit it through the environment, which they read as they start."""
        path = self.settings.data_dir / "metrics"
        shutil.rmtree(path, ignore_errors=True)  # the counts of an earlier run are not this one's
        path.mkdir(parents=True)
        os.environ[MULTIPROCESS_DIR] = str(path)
        return str(path)

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _roll(self, signum: int, frame: object) -> None:
        self._rolling = True

    def _start(self, worker: Worker) -> None:
        worker.ready = _SPAWN.Event()
        worker.process = _SPAWN.Process(
            target=run_worker,
            args=(worker.settings, self.sock, worker.ready, self.server_options),
            name=worker.name,
        )
        worker.process.start()
        worker.started = time.monotonic()

    def _wait_ready(self, workers: list[Worker]) -> bool:
        deadline = time.monotonic() + READY_SECONDS
        for worker in workers:
            assert worker.ready is not None and worker.process is not None
            while not worker.ready.wait(0.2):
                if self._stopping or not worker.process.is_alive() or time.monotonic() > deadline:
                    return False
        return True

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is None or process.is_alive():
                if process is None and now >= worker.restart_at and not self._stopping:
                    self._start(worker)
                continue
            lived = now - worker.started
            worker.pause = min(max(1.0, 2 * worker.pause), MAX_PAUSE_SECONDS) if lived < QUICK_DEATH_SECONDS else 0.0
            log.error(
                "worker %s (pid %s) exited with code %s after %.0f s; restarting it%s",
                worker.name,
                process.pid,
                process.exitcode,
                lived,
                f" in {worker.pause:.0f} s" if worker.pause else "",
            )
            _forget_live_gauges(process.pid)
            process.close()
            worker.process = None
            worker.restart_at = now + worker.pause

    def _rolling_restart(self) -> None:
        """One worker at a time: it drains and signs its head, then its successor starts on the same chain."""
        log.info("rolling restart of %d workers", len(self.workers))
        for worker in self.workers:
            if self._stopping:
                break
            self._stop_one(worker)
            if self._stopping:  # a stop came while this worker drained: no successor to start and stop again
                break
            self._start(worker)
            # Not ready because a stop came while it started is a restart cut short, not a failed one.
            if not self._wait_ready([worker]) and not self._stopping:
                log.error("worker %s did not come back ready; rolling restart stopped", worker.name)
                return
        log.info("rolling restart cut short: the gateway is stopping" if self._stopping else "rolling restart done")

    def _stop_one(self, worker: Worker) -> None:
        process = worker.process
        if process is None:
            return
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
        process.join()
        _forget_live_gauges(process.pid)
        process.close()
        worker.process = None

    def _stop_all(self) -> None:
        """SIGTERM to every worker at once (each drains in parallel), then wait for all of them."""
        self.sock.close()  # once the workers close theirs too, a new connection is refused rather than left waiting
        for worker in self.workers:
            process = worker.process
            if process is not None and process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join()
                # uvicorn ends by raising the signal it drained on again: -SIGTERM is a clean stop.
                if worker.process.exitcode not in (0, -signal.SIGTERM):
                    log.error("worker %s exited with code %s", worker.name, worker.process.exitcode)
                worker.process.close()
                worker.process = None


def _forget_live_gauges(pid: int | None) -> None:
    """A worker that is gone no longer counts in the `live*` gauges; its counters stay in the totals."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if directory and pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
