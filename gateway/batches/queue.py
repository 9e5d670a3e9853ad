"""Where chunks wait to run: procrastinate on PostgreSQL (every node's workers share it), or this process on SQLite.

Both run the same task, `run_chunk(batch_id, chunk_no)`, which does nothing for a chunk already done: a chunk may
run twice (a node died in it, or a stalled worker came back), never count twice.

On PostgreSQL the jobs live in the gateway's own database, in procrastinate's tables: a batch's chunks are deferred
by procrastinate's SQL function in the very transaction that records the batch, so a batch is never recorded without
its chunks queued, nor the reverse. A node killed with `kill -9` stops sending heartbeats; after
`MSJX_BATCH_STALL_SECONDS` any other node (or the same one, restarted) puts its chunks back in the queue.

On SQLite (one node) the chunk rows themselves are the queue: pending chunks of live batches are picked up by this
process, including after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.batches.tables import BatchChunk, BatchJob
from gateway.clock import Periodic, periodic
from gateway.storage.connection_room import queue_connections

log = logging.getLogger("msjx.batches")
QUEUE = "msjx-batches"
TASK = "msjx.batch_chunk"
LIVE_STATES = ("queued", "running")
RunChunk = Callable[[str, int], Awaitable[None]]


class ChunkQueue(Protocol):
    kind: str

    async def start(self, *, worker: bool) -> None: ...

    async def close(self) -> None: ...

    async def enqueue_in(self, connection: AsyncConnection, batch_id: str, chunk_nos: Sequence[int]) -> None:
        """Queue chunks inside the caller's transaction (nothing is queued if it rolls back)."""
        ...

    async def enqueue(self, batch_id: str, chunk_nos: Sequence[int], at: datetime | None = None) -> None:
        """Queue chunks again (a resumed batch); a chunk already waiting is not queued twice."""
        ...

    def wake(self) -> None: ...


class LocalQueue:
    """SQLite: pending chunks of live batches, read from the database and run here, `workers` at a time."""

    kind = "local"

    def __init__(self, engine: AsyncEngine, run_chunk: RunChunk, workers: int, poll_seconds: float = 30.0) -> None:
        self._engine = engine
        self._run_chunk = run_chunk
        self._workers = workers
        self._poll = poll_seconds
        self._running: set[tuple[str, int]] = set()
        self._failed_until: dict[tuple[str, int], float] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(max(1, workers))
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, *, worker: bool) -> None:
        if worker and self._workers > 0:
            self._task = asyncio.create_task(self._dispatch(), name="batch-local-queue")

    def wake(self) -> None:
        self._wakeup.set()

    async def enqueue_in(self, connection: AsyncConnection, batch_id: str, chunk_nos: Sequence[int]) -> None:
        return None  # the chunk rows, written in the same transaction, are the queue

    async def enqueue(self, batch_id: str, chunk_nos: Sequence[int], at: datetime | None = None) -> None:
        self.wake()

    async def _pending(self, limit: int) -> list[tuple[str, int]]:
        chunks, jobs = BatchChunk.__table__.c, BatchJob.__table__.c
        query = (
            chunks.batch_id.table.select()
            .with_only_columns(chunks.batch_id, chunks.chunk_no)
            .join_from(BatchChunk.__table__, BatchJob.__table__, chunks.batch_id == jobs.batch_id)
            .where(chunks.state == "pending", jobs.state.in_(LIVE_STATES))
            .order_by(jobs.created_at, chunks.chunk_no)
            .limit(limit + len(self._running))
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        now = asyncio.get_running_loop().time()
        return [
            (row[0], row[1])
            for row in rows
            if (row[0], row[1]) not in self._running and self._failed_until.get((row[0], row[1]), 0) <= now
        ]

    async def _dispatch(self) -> None:
        while True:
            # Cleared before the look, not after: a wake-up (a batch committed, a chunk done) that comes while the
            # query runs is kept, and the loop looks again at once instead of sleeping through it.
            self._wakeup.clear()
            try:
                found = await self._pending(self._workers)
            except Exception as exc:  # the database may be briefly away; try again after a poll
                log.warning("batch queue could not read pending chunks: %s", type(exc).__name__)
                found = []
            for key in found:
                await self._slots.acquire()
                self._running.add(key)
                task = asyncio.create_task(self._run(key), name=f"batch-chunk-{key[0]}-{key[1]}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not found:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_wait())

    def _idle_wait(self) -> float:
        """Nothing to run: sleep until woken (a submission, a resume, a chunk done), or until a failed chunk may be
        tried again. An idle node used to look every second (0.9 % of an idle gateway's event loop in a profile);
        `poll_seconds` (30) is now only a safety net."""
        now = asyncio.get_running_loop().time()
        retries = [until - now for until in self._failed_until.values() if until > now]
        return max(0.05, min([self._poll, *retries]))

    async def _run(self, key: tuple[str, int]) -> None:
        try:
            await self._run_chunk(*key)
            self._failed_until.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            # As procrastinate's retry would: the chunk stays pending and is tried again a little later.
            log.exception("batch %s chunk %d failed; it runs again shortly", *key)
            self._failed_until[key] = asyncio.get_running_loop().time() + 2.0
        finally:
            self._running.discard(key)
            self._slots.release()
            self.wake()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# procrastinate's own SQL function (its stable, versioned interface), called on the gateway's connection so that the
# jobs are part of the transaction that records the batch. The lock makes a chunk run on one worker at a time, the
# queueing lock keeps at most one waiting job per chunk.
DEFER_SQL = text(
    "SELECT procrastinate_defer_jobs_v1(ARRAY("
    "SELECT ROW(:queue, :task, 0, t.lock, t.lock, CAST(t.args AS jsonb), NULL)::procrastinate_job_to_defer_v1"
    " FROM unnest(CAST(:locks AS text[]), CAST(:args AS text[])) AS t(lock, args)))"
)


class _OutageAsWarning(logging.Filter):
    """procrastinate logs a lost LISTEN connection as an ERROR with its traceback, and retries by itself. While the
    database is away, or refuses more connections, that is an outage the gateway already reports (503s,
    msjx_dependency_up), not a fault: one warning line each time, naming the exception and the driver's first line
    (which says which it is), without the traceback."""

    def __init__(self, outages: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.outages = outages

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if isinstance(exc, self.outages):
                cause = exc.__cause__ or exc
                said = str(cause).strip().splitlines()
                record.msg, record.args = (
                    "batch queue: %s: %s (it reconnects by itself)",
                    (type(exc).__name__, said[0] if said else type(cause).__name__),
                )
                record.levelno, record.levelname, record.exc_info, record.exc_text = (
                    logging.WARNING,
                    "WARNING",
                    None,
                    None,
                )
        return True


class ProcrastinateQueue:
    """PostgreSQL: chunks are procrastinate jobs; this node's worker takes `workers` of them at a time."""

    kind = "procrastinate"

    def __init__(self, dsn: str, run_chunk: RunChunk, workers: int, stall_seconds: float, node_id: str) -> None:
        import procrastinate

        self._procrastinate = procrastinate
        outage = _OutageAsWarning((procrastinate.exceptions.ConnectorException, OSError))
        for name in ("procrastinate.utils", "procrastinate.worker", "procrastinate.manager"):
            if not any(isinstance(f, _OutageAsWarning) for f in logging.getLogger(name).filters):
                logging.getLogger(name).addFilter(outage)
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=queue_connections(workers))
        )
        self._run_chunk = run_chunk

        async def batch_chunk(batch_id: str, chunk_no: int) -> None:
            await run_chunk(batch_id, chunk_no)

        # Retried after an unexpected failure (the database or the audit store away): the chunk is idempotent.
        self.task = self.app.task(name=TASK, queue=QUEUE, retry=procrastinate.RetryStrategy(max_attempts=30, wait=2))(
            batch_chunk
        )
        self._workers = workers
        self._stall = stall_seconds
        self._node_id = node_id
        self._worker: asyncio.Task[None] | None = None
        self._reaper: Periodic | None = None

    async def start(self, *, worker: bool) -> None:
        await self.app.open_async()
        if worker and self._workers > 0:
            options: dict[str, Any] = {
                "queues": [QUEUE],
                "concurrency": self._workers,
                "name": f"msjx-{self._node_id}",
                "install_signal_handlers": False,
                "update_heartbeat_interval": max(0.2, self._stall / 4),
                "stalled_worker_timeout": self._stall,
                # Workers LISTEN for new jobs; the poll only finds what no notification announces: a chunk put
                # back by the stall reaper, or a retry come due. A quarter of the stall window, at most 1 s, keeps
                # those prompt without an idle node querying PostgreSQL five times a second.
                "fetch_job_polling_interval": min(1.0, max(0.2, self._stall / 4)),
                "delete_jobs": "successful",
            }
            self._worker = asyncio.create_task(self.app.run_worker_async(**options), name="batch-worker")
            self._reaper = periodic(
                "batch-stalled-chunks", max(0.2, self._stall / 2), self._reap, on_error=_stalled_not_checked
            )

    def wake(self) -> None:
        return None  # procrastinate's workers LISTEN for new jobs

    async def enqueue_in(self, connection: AsyncConnection, batch_id: str, chunk_nos: Sequence[int]) -> None:
        if not chunk_nos:
            return
        locks = [f"{batch_id}:{n}" for n in chunk_nos]
        args = [orjson.dumps({"batch_id": batch_id, "chunk_no": n}).decode() for n in chunk_nos]
        await connection.execute(DEFER_SQL, {"queue": QUEUE, "task": TASK, "locks": locks, "args": args})

    async def enqueue(self, batch_id: str, chunk_nos: Sequence[int], at: datetime | None = None) -> None:
        for chunk_no in chunk_nos:
            lock = f"{batch_id}:{chunk_no}"
            deferrer = self.task.configure(lock=lock, queueing_lock=lock, schedule_at=at)
            with contextlib.suppress(self._procrastinate.exceptions.AlreadyEnqueued):
                await deferrer.defer_async(batch_id=batch_id, chunk_no=chunk_no)

    async def _reap(self) -> None:
        """Chunks held by a worker that stopped beating (a node killed mid-chunk) go back to the queue."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=self._stall)
        for job in stalled:
            log.warning("batch chunk job %s was held by a worker that stopped; it runs again", job.id)
            await manager.retry_job(job)
        await manager.prune_stalled_workers(self._stall)

    async def close(self) -> None:
        if self._reaper is not None:
            await self._reaper.stop()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        await self.app.close_async()


def _stalled_not_checked(exc: Exception) -> None:
    # The database may be briefly away: the next round checks.
    log.warning("stalled batch chunks not checked: %s", type(exc).__name__)
