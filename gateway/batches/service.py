"""Batch jobs: submit (checked in full, recorded with its chunks queued in one transaction), run a chunk, pause on
quota, stop on revocation, cancel, report, stream results, expire them.

A chunk runs under the same rules as a single call: a grant for (service, operation, purpose) whose share method
allows `batch`, only the granted fields kept per subject, each subject counted against the grant's daily quota, and
one audit record per subject and operation, durable before the chunk's results are stored. The chunk's results and
its `done` mark are one write that only succeeds once, so a chunk run twice (a node killed in it) keeps one result
per subject and operation; its audit records show both attempts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy import CursorResult, Executable, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from adapters.base import Adapter, UpstreamResult
from adapters.errors import UpstreamError
from gateway.access.directory import Directory, GrantInfo
from gateway.access.grants import grant_for
from gateway.access.quotas import Quotas, quota_item
from gateway.api.services import upstream_status
from gateway.audit.writer import AuditEvent, AuditWriter, new_request_id
from gateway.batches.pacing import AdaptiveLimit
from gateway.batches.queue import LIVE_STATES, ChunkQueue, LocalQueue, ProcrastinateQueue
from gateway.batches.subjects import Subject, Target
from gateway.batches.tables import BatchChunk, BatchJob
from gateway.clock import SYSTEM_CLOCK, Clock, Periodic, periodic
from gateway.http.problems import Problem
from gateway.settings import Settings
from schemas.problems import ProblemCode
from schemas.times import china_date, seconds_to_next_china_day
from security.crypto import open_sealed, seal
from security.keyring import KeyRing

if TYPE_CHECKING:  # the type only: the runtime is built by its callers, never imported to run a batch
    from gateway.runtime import Runtime

log = logging.getLogger("msjx.batches")
TERMINAL = ("done", "failed", "cancelled")
SUBJECT_EVENT = "batch.subject"
# The longest a chunk waits between two slices of its work for interactive exchanges to end.
INTERACTIVE_WAIT = 0.05
INTERACTIVE_WAIT_STEPS = 25
# Subjects in one bulk request at most, whatever the upstream allows: a bulk answer is read, checked and recorded in
# one go, and an upstream answers it in one go too, so an interactive call waits behind a slice, on either side. 50
# against 100 (docs/batches.md): interactive credit calls' p99 during a 100,000 x 2 batch 26-31 ms against 38-40,
# for the same batch time and CPU; 25 gained no more.
BULK_SLICE = 50


@dataclass(frozen=True)
class Planned:
    """One operation of a submission, resolved: its adapter and the grant it will run under."""

    service: str
    operation: str
    params: dict[str, Any]
    grant: GrantInfo
    input_model: type[BaseModel]

    def target(self) -> Target:
        return Target(f"{self.service}/{self.operation}", self.input_model, self.params)


def _aad(batch_id: str, chunk_no: int, part: str) -> bytes:
    return f"batch/{batch_id}/{chunk_no}/{part}".encode()


def problem_of(exc: UpstreamError) -> tuple[int, str]:
    return exc.status, exc.code


class BatchService:
    """One per gateway process: the submit/status/results side for the API, and this node's chunk worker."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: AsyncEngine,
        sessions: async_sessionmaker,
        directory: Directory,
        quotas: Quotas,
        audit: AuditWriter,
        keyring: KeyRing | None,
        adapters: Mapping[str, Adapter],
        clock: Clock = SYSTEM_CLOCK,
        interactive: Callable[[], int] | None = None,
        worker: bool = True,
    ) -> None:
        """The services a batch uses, as the runtime holds them (`adapters` is its live catalog: upstreams registered
        later are seen); `interactive` counts the signed exchanges under way on this node (none when not given)."""
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self.directory = directory
        self.quotas = quotas
        self.audit = audit
        self.keyring = keyring
        self.adapters = adapters
        self.clock = clock
        self._interactive_count = interactive
        self.node_id = settings.node_id
        self._worker = worker
        self.queue: ChunkQueue
        if settings.is_sqlite:
            self.queue = LocalQueue(engine, self.run_chunk, settings.batch_workers)
        else:
            dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.queue = ProcrastinateQueue(
                dsn, self.run_chunk, settings.batch_workers, settings.batch_stall_seconds, settings.node_id
            )
        self._limits: dict[str, AdaptiveLimit] = {}
        self._sweeper: Periodic | None = None
        self._next_expiry = 0.0
        self.chunks_run = 0

    @classmethod
    def from_runtime(cls, runtime: Runtime, *, worker: bool = True) -> BatchService:
        """The service over a started runtime's own services and clock (`serve` and `batch-worker` alike)."""

        def interactive() -> int:
            exchanges = runtime.exchanges
            return exchanges.in_progress if exchanges is not None else 0

        return cls(
            runtime.settings,
            engine=runtime.engine,
            sessions=runtime.sessions,
            directory=runtime.directory,
            quotas=runtime.quotas,
            audit=runtime.audit,
            keyring=runtime.keyring,
            adapters=runtime.adapters,
            clock=runtime.clock,
            interactive=interactive,
            worker=worker,
        )

    # --- life cycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.queue.start(worker=self._worker)
        if self._worker:
            self._sweeper = periodic(
                "batch-sweeper", self.settings.batch_recheck_seconds, self._sweep, run_first=True, on_error=_not_swept
            )

    async def close(self) -> None:
        if self._sweeper is not None:
            await self._sweeper.stop()
        await self.queue.close()

    async def _sweep(self) -> None:
        """Resume paused batches whose quota is back; delete results past MSJX_BATCH_RESULT_DAYS."""
        await self.resume_due()
        if time.monotonic() >= self._next_expiry:
            await self.expire_results()
            self._next_expiry = time.monotonic() + 3600

    # --- submission ---------------------------------------------------------------------------------------------

    async def plan(self, caller_id: str, purpose: str, operations: Sequence[dict[str, Any]]) -> list[Planned]:
        """Each operation with the grant that allows it by batch now, or the refusal a single call would get."""
        planned = []
        seen = set()
        for index, entry in enumerate(operations):
            service, name = entry["service"], entry["operation"]
            if (service, name) in seen:
                raise Problem(
                    ProblemCode.OPERATION_REPEATED,
                    f"{service}/{name} is named twice",
                    errors=[
                        {
                            "field": f"operations/{index}",
                            "message": "named twice",
                            "type": ProblemCode.OPERATION_REPEATED,
                        }
                    ],
                )
            seen.add((service, name))
            adapter = self.adapters.get(service)
            if adapter is None:
                raise Problem(ProblemCode.UNKNOWN_SERVICE, f"no service {service!r}")
            operation = adapter.operations.get(name)
            if operation is None:
                raise Problem(ProblemCode.UNKNOWN_OPERATION, f"{service} has no operation {name!r}")
            if not operation.safe:
                raise Problem(
                    ProblemCode.OPERATION_NOT_BATCHABLE,
                    f"{service}/{name} changes state; only read-only operations run in batches",
                )
            grant = await self.grant_for(caller_id, service, name, purpose)
            params = dict(entry.get("params") or {})
            if entry.get("shared"):  # given once for all operations: each keeps those it takes
                params = {key: value for key, value in params.items() if key in operation.input_model.model_fields}
            planned.append(Planned(service, name, params, grant, operation.input_model))
        return planned

    async def grant_for(self, caller_id: str, service: str, operation: str, purpose: str) -> GrantInfo:
        return await grant_for(self.directory, caller_id, service, operation, purpose, method="batch")

    async def create(
        self, caller_id: str, department: str, purpose: str, planned: Sequence[Planned], subjects: Sequence[Subject]
    ) -> BatchJob:
        """Record the batch and its chunks, and queue the chunks, in one transaction."""
        size = self.settings.batch_chunk_size
        batch_id = "b-" + secrets.token_hex(12)
        now = self.clock.now()
        pieces = [subjects[start : start + size] for start in range(0, len(subjects), size)]
        job = BatchJob(
            batch_id=batch_id,
            caller_id=caller_id,
            department=department,
            purpose=purpose,
            operations=[
                {"service": p.service, "operation": p.operation, "params": p.params, "grant_id": p.grant.grant_id}
                for p in planned
            ],
            state="queued",
            total=len(subjects),
            chunk_size=size,
            chunks=len(pieces),
            created_at=now,
        )
        key = self.keyring.current()  # type: ignore[union-attr]
        chunk_rows = [
            {
                "batch_id": batch_id,
                "chunk_no": number,
                "size": len(piece),
                "state": "pending",
                "attempts": 0,
                "subjects": seal(key, orjson.dumps(piece), _aad(batch_id, number, "subjects")),
                "data_key_id": key.key_id,
            }
            for number, piece in enumerate(pieces)
        ]
        async with self.engine.begin() as connection:
            await connection.execute(BatchJob.__table__.insert(), [_row(job)])
            for start in range(0, len(chunk_rows), 500):
                await connection.execute(BatchChunk.__table__.insert(), chunk_rows[start : start + 500])
            await self.queue.enqueue_in(connection, batch_id, range(len(pieces)))
        self.queue.wake()
        return job

    # --- running a chunk ----------------------------------------------------------------------------------------

    def _interactive(self) -> int:
        """Signed exchanges under way on this node (single calls, and the batch API's own short ones)."""
        return self._interactive_count() if self._interactive_count is not None else 0

    async def _make_way(self) -> None:
        """Between slices of a chunk's work: give the event loop to others, and while interactive exchanges are under
        way, wait for them a little (at most INTERACTIVE_WAIT seconds, so a batch always moves on)."""
        await asyncio.sleep(0)
        if not self.settings.batch_interactive_floor:
            return
        for _ in range(INTERACTIVE_WAIT_STEPS):
            if not self._interactive():
                return
            await asyncio.sleep(INTERACTIVE_WAIT / INTERACTIVE_WAIT_STEPS)

    def limit_for(self, adapter: Adapter) -> AdaptiveLimit:
        limit = self._limits.get(adapter.service)
        if limit is None:
            ceiling = max(1, min(adapter.policy.max_concurrency // 2, self.settings.batch_max_in_flight))
            limit = self._limits[adapter.service] = AdaptiveLimit(
                ceiling, interactive=self._interactive, floor=self.settings.batch_interactive_floor
            )
        return limit

    async def run_chunk(self, batch_id: str, chunk_no: int) -> None:
        """The task both queues run: call, audit, store, once."""
        async with self.sessions() as session:
            job = await session.get(BatchJob, batch_id)
            chunk = await session.get(BatchChunk, (batch_id, chunk_no))
        if job is None or chunk is None or chunk.state != "pending" or job.state not in LIVE_STATES:
            return  # done already, or the batch is paused, stopped or cancelled: resume queues it again
        grants: list[GrantInfo] = []
        for entry in job.operations:
            try:
                grants.append(await self.grant_for(job.caller_id, entry["service"], entry["operation"], job.purpose))
            except Problem as refusal:
                await self.stop(job, refusal)
                return
        resume_in = await self.reserve(grants, chunk.size)
        if resume_in is not None:
            await self.pause(job, ProblemCode.QUOTA_EXHAUSTED, resume_in)
            return
        now = self.clock.now()
        await self._write_alone(
            update(BatchChunk)
            .where(BatchChunk.batch_id == batch_id, BatchChunk.chunk_no == chunk_no)
            .values(attempts=BatchChunk.attempts + 1)
        )
        await self._write_alone(
            update(BatchJob)
            .where(BatchJob.batch_id == batch_id, BatchJob.state == "queued")
            .values(state="running", started_at=now)
        )
        attempt = chunk.attempts + 1
        key = await self.keyring.get(chunk.data_key_id)  # type: ignore[union-attr]
        subjects: list[list[Any]] = orjson.loads(
            open_sealed(key, chunk.subjects or b"", _aad(batch_id, chunk_no, "subjects"))
        )
        lines, summary, events = await self._call(job, grants, subjects, chunk_no, attempt)
        # Durable in the audit before anything can be read: a failure here raises, and the chunk runs again.
        for start in range(0, len(events), 64):
            # Sealed and queued 64 at a time (each slice one group commit at most): never a long hold of the loop,
            # and an interactive call's record never waits behind more than one slice.
            await self.audit.append_many(events[start : start + 64])
            await self._make_way()
        stored = await self._write_alone(
            update(BatchChunk)
            .where(BatchChunk.batch_id == batch_id, BatchChunk.chunk_no == chunk_no, BatchChunk.state == "pending")
            .values(
                state="done",
                # Under the subjects' key: destroying it shreds both.
                results=seal(key, b"\n".join(lines), _aad(batch_id, chunk_no, "results")),
                summary=summary,
                done_at=self.clock.now(),
                done_by=self.node_id,
            )
        )
        self.chunks_run += 1
        if stored.rowcount:
            await self._finish_if_done(job)

    async def _write_alone(self, statement: Executable) -> CursorResult[Any]:
        """One statement, committed by the driver within its own call (SQLAlchemy resets the connection when it goes
        back to the pool). On SQLite a transaction holds the database's write lock until its COMMIT, which came a
        return to the event loop later, and every audit commit, a single call's too, waited for the chunk writes:
        a one-record commit's BEGIN IMMEDIATE waited 3.8 ms at p99 during a batch, 0.7 without those holds."""
        async with self.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await autocommit.execute(statement)

    async def _finish_if_done(self, job: BatchJob) -> None:
        async with self.engine.begin() as connection:
            pending = (
                await connection.execute(
                    select(BatchChunk.chunk_no)
                    .where(BatchChunk.batch_id == job.batch_id, BatchChunk.state == "pending")
                    .limit(1)
                )
            ).first()
            if pending is not None:
                return
            finished = await connection.execute(
                update(BatchJob)
                .where(BatchJob.batch_id == job.batch_id, BatchJob.state.in_(("running", "queued", "paused")))
                .values(state="done", finished_at=self.clock.now(), pause_code=None, resume_at=None)
            )
        if finished.rowcount:
            await self.audit_job(job, "batch.done", "allowed", 200)

    async def _call(
        self, job: BatchJob, grants: Sequence[GrantInfo], subjects: list[list[Any]], chunk_no: int, attempt: int
    ) -> tuple[list[bytes], list[dict[str, Any]], list[AuditEvent]]:
        count = len(subjects)
        ops = job.operations
        first_subject = chunk_no * job.chunk_size
        outcomes: list[list[UpstreamResult | UpstreamError]] = await asyncio.gather(
            *(self._run_operation(entry, subjects) for entry in ops)
        )
        request_id = new_request_id()
        reason = f"batch {job.batch_id} chunk {chunk_no} attempt {attempt}"
        path = f"/v1/batches/{job.batch_id}"
        lines: list[bytes] = []
        events: list[AuditEvent] = []
        summary: list[dict[str, Any]] = [{"done": count, "outcomes": defaultdict(int)} for _ in ops]
        for index in range(count):
            if index % 32 == 31:
                # A chunk's lines and records are built in slices: interactive calls get the event loop in between.
                await self._make_way()
            uscc = subjects[index][0]
            for op_index, entry in enumerate(ops):
                grant = grants[op_index]
                outcome = outcomes[op_index][index]
                line_no = (first_subject + index) * len(ops) + op_index + 1
                record: dict[str, Any] = {
                    "line": line_no,
                    "uscc": uscc,
                    "service": entry["service"],
                    "operation": entry["operation"],
                }
                event = AuditEvent(
                    event=SUBJECT_EVENT,
                    request_id=request_id,
                    decision="allowed",
                    status_code=200,
                    caller_id=job.caller_id,
                    department=job.department,
                    method="BATCH",
                    path=path,
                    service=entry["service"],
                    operation=entry["operation"],
                    purpose=job.purpose,
                    grant_id=grant.grant_id,
                    subject=uscc,
                    target_id=job.batch_id,
                    reason=reason,
                    request_body=orjson.dumps(subjects[index]),
                )
                if isinstance(outcome, UpstreamResult):
                    data = {name: outcome.data[name] for name in grant.fields if name in outcome.data}
                    record["status"] = 200
                    record["data"] = data
                    event.fields = tuple(data)
                    event.upstream_status = upstream_status(outcome.upstream_status, outcome.attempts)
                    summary[op_index]["outcomes"]["ok"] += 1
                else:
                    status, code = problem_of(outcome)
                    record["status"] = status
                    record["problem"] = code
                    event.decision = "failed" if status >= 500 else "refused"
                    event.status_code = status
                    event.reason_code = code
                    event.upstream_status = upstream_status(outcome.upstream_status, outcome.attempts)
                    event.upstream_us = 0  # it reached the upstream: the quota rebuild counts it
                    summary[op_index]["outcomes"][code] += 1
                line = orjson.dumps(record)
                event.response_body = line
                lines.append(line)
                events.append(event)
        return lines, [{"done": s["done"], "outcomes": dict(s["outcomes"])} for s in summary], events

    async def _run_operation(
        self, entry: dict[str, Any], subjects: list[list[Any]]
    ) -> list[UpstreamResult | UpstreamError]:
        adapter = self.adapters.get(entry["service"])
        if adapter is None:
            from adapters.errors import UpstreamUnavailable

            missing = UpstreamUnavailable(entry["service"], "the service is no longer offered")
            return [missing] * len(subjects)
        operation = adapter.operations[entry["operation"]]
        names = operation.input_model.model_fields
        models: list[BaseModel | UpstreamError] = []
        for uscc, params in subjects:
            values = {**entry.get("params", {}), **{k: v for k, v in params.items() if k in names}, "uscc": uscc}
            try:
                models.append(operation.input_model.model_validate(values))
            except ValidationError as exc:  # checked at submission; a contract changed since
                models.append(UpstreamError(ProblemCode.VALIDATION_FAILED, str(exc.errors()[0].get("msg"))))
        bulk_max = min(getattr(adapter, "bulk_operations", {}).get(operation.name) or 0, BULK_SLICE)
        results: list[UpstreamResult | UpstreamError] = [None] * len(models)  # type: ignore[list-item]
        valid = [(i, m) for i, m in enumerate(models) if isinstance(m, BaseModel)]
        for i, m in enumerate(models):
            if not isinstance(m, BaseModel):
                results[i] = m
        if bulk_max:
            limit = self.limit_for(adapter)
            for start in range(0, len(valid), bulk_max):
                part = valid[start : start + bulk_max]
                try:
                    answers = await limit.run(
                        lambda part=part: adapter.invoke_bulk(operation.name, [m for _, m in part])
                    )  # type: ignore[attr-defined,misc]
                except UpstreamError as exc:
                    answers = [exc] * len(part)
                for (i, _), answer in zip(part, answers, strict=True):
                    results[i] = answer
            return results
        limit = self.limit_for(adapter)
        waiting = iter(valid)

        async def caller() -> None:
            # A few callers take the subjects in turn, rather than a task per subject of which all but the limit's
            # few would wait: a chunk holds `ceiling` coroutines per operation, not 500.
            for i, model in waiting:
                try:
                    results[i] = await limit.run(lambda model=model: adapter.invoke(operation.name, model))
                except UpstreamError as exc:
                    results[i] = exc

        await asyncio.gather(*(caller() for _ in range(min(limit.ceiling, len(valid)))))
        return results

    # --- quota, pause, stop -------------------------------------------------------------------------------------

    async def reserve(self, grants: Sequence[GrantInfo], subjects: int) -> float | None:
        """Count `subjects` calls of each operation against its grant's daily quota: None when all fit, else the
        seconds until the quota window resets (nothing is kept counted then)."""
        scopes: dict[str, tuple[int, int]] = {}
        for grant in grants:
            if grant.daily_quota is None:
                continue
            quota, calls = scopes.get(grant.quota_scope, (grant.daily_quota, 0))
            scopes[grant.quota_scope] = (quota, calls + subjects)
        if not scopes:
            return None
        quotas = self.quotas
        storage = quotas.storage
        now = self.clock.now()
        day = china_date(now).isoformat()
        taken: list[tuple[str, int, int]] = []
        try:
            for scope, (quota, calls) in scopes.items():
                item = quota_item(quota)
                key = item.key_for("quota", scope, day)
                count = await storage.incr(key, item.get_expiry(), calls)
                taken.append((key, item.get_expiry(), calls))
                if count > quota:
                    for back_key, expiry, back in taken:
                        await storage.incr(back_key, expiry, -back)
                    return seconds_to_next_china_day(now)
        except Exception as exc:
            from limits.errors import StorageError

            if isinstance(exc, StorageError):
                quotas.health.failed(exc.storage_error)
            raise
        return None

    async def pause(self, job: BatchJob, code: ProblemCode, resume_in: float) -> None:
        now = self.clock.now()
        async with self.engine.begin() as connection:
            paused = await connection.execute(
                update(BatchJob)
                .where(BatchJob.batch_id == job.batch_id, BatchJob.state.in_(LIVE_STATES))
                .values(state="paused", paused_at=now, pause_code=code, resume_at=now + timedelta(seconds=resume_in))
            )
        if paused.rowcount:
            log.info("batch %s paused: %s", job.batch_id, code)
            await self.audit_job(job, "batch.pause", "refused", 429, reason_code=code)

    async def stop(self, job: BatchJob, refusal: Problem) -> None:
        """A grant the batch runs under may no longer be used (revoked, suspended, expired): the batch fails."""
        async with self.engine.begin() as connection:
            stopped = await connection.execute(
                update(BatchJob)
                .where(BatchJob.batch_id == job.batch_id, BatchJob.state.in_((*LIVE_STATES, "paused")))
                .values(
                    state="failed", finished_at=self.clock.now(), stop_code=refusal.code, stop_detail=refusal.detail
                )
            )
        if stopped.rowcount:
            log.info("batch %s stopped: %s", job.batch_id, refusal.code)
            await self.audit_job(job, "batch.stop", "refused", refusal.status, reason_code=refusal.code)

    async def resume_due(self) -> int:
        """Paused batches whose every grant has quota again (the window reset, or the quota was raised) resume."""
        async with self.sessions() as session:
            paused = (await session.scalars(select(BatchJob).where(BatchJob.state == "paused"))).all()
        resumed = 0
        for job in paused:
            if not await self._quota_back(job):
                continue
            async with self.engine.begin() as connection:
                changed = await connection.execute(
                    update(BatchJob)
                    .where(BatchJob.batch_id == job.batch_id, BatchJob.state == "paused")
                    .values(
                        state="running" if job.started_at else "queued",
                        paused_at=None,
                        pause_code=None,
                        resume_at=None,
                    )
                )
                pending = (
                    await connection.execute(
                        select(BatchChunk.chunk_no).where(
                            BatchChunk.batch_id == job.batch_id, BatchChunk.state == "pending"
                        )
                    )
                ).scalars()
                chunk_nos = list(pending)
            if not changed.rowcount:
                continue  # another node resumed it
            resumed += 1
            log.info("batch %s resumed", job.batch_id)
            await self.audit_job(job, "batch.resume", "allowed", 200)
            await self.queue.enqueue(job.batch_id, chunk_nos)
        return resumed

    async def _quota_back(self, job: BatchJob) -> bool:
        now = self.clock.now()
        if job.resume_at is not None and job.resume_at <= now:
            return True
        for entry in job.operations:
            try:
                grant = await self.grant_for(job.caller_id, entry["service"], entry["operation"], job.purpose)
            except Problem as refusal:
                await self.stop(job, refusal)
                return False
            if grant.daily_quota is None:
                continue
            used = await self.quotas.used_today(grant, now)
            if used is not None and used + min(job.chunk_size, job.total) > grant.daily_quota:
                return False
        return True

    async def cancel(self, job: BatchJob) -> bool:
        async with self.engine.begin() as connection:
            cancelled = await connection.execute(
                update(BatchJob)
                .where(BatchJob.batch_id == job.batch_id, BatchJob.state.not_in(TERMINAL))
                .values(state="cancelled", finished_at=self.clock.now())
            )
        return bool(cancelled.rowcount)

    async def expire_results(self, now: datetime | None = None) -> int:
        """Delete the subjects and results of batches that ended more than MSJX_BATCH_RESULT_DAYS ago."""
        moment = now or self.clock.now()
        before = moment - timedelta(days=self.settings.batch_result_days)
        async with self.engine.begin() as connection:
            ids = (
                (
                    await connection.execute(
                        select(BatchJob.batch_id).where(
                            BatchJob.finished_at.is_not(None),
                            BatchJob.finished_at < before,
                            BatchJob.results_expired_at.is_(None),
                        )
                    )
                )
                .scalars()
                .all()
            )
            for batch_id in ids:
                await connection.execute(
                    update(BatchChunk).where(BatchChunk.batch_id == batch_id).values(subjects=None, results=None)
                )
                await connection.execute(
                    update(BatchJob).where(BatchJob.batch_id == batch_id).values(results_expired_at=moment)
                )
        if ids:
            log.info("results of %d batch(es) deleted after %d days", len(ids), self.settings.batch_result_days)
        return len(ids)

    async def audit_job(
        self, job: BatchJob, event_name: str, decision: str, status: int, reason_code: str | None = None
    ) -> None:
        """A record of what the batch itself did (pause, resume, stop, done), as the gateway acting for it."""
        await self.audit.append(
            AuditEvent(
                event=event_name,
                request_id=new_request_id(),
                decision=decision,
                status_code=status,
                caller_id=job.caller_id,
                department=job.department,
                method="BATCH",
                path=f"/v1/batches/{job.batch_id}",
                purpose=job.purpose,
                target_id=job.batch_id,
                reason_code=reason_code,
            )
        )

    # --- reading ------------------------------------------------------------------------------------------------

    async def load(self, batch_id: str, caller_id: str) -> BatchJob:
        async with self.sessions() as session:
            job = await session.get(BatchJob, batch_id)
        # Another caller's batch does not exist, as far as this caller can tell.
        if job is None or job.caller_id != caller_id:
            raise Problem(ProblemCode.BATCH_UNKNOWN, f"no batch {batch_id!r} of this caller")
        return job

    async def status(self, job: BatchJob) -> dict[str, Any]:
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(BatchChunk.chunk_no, BatchChunk.state, BatchChunk.size, BatchChunk.summary).where(
                        BatchChunk.batch_id == job.batch_id
                    )
                )
            ).all()
        per_op = [
            {
                "service": entry["service"],
                "operation": entry["operation"],
                "grant_id": entry["grant_id"],
                "done": 0,
                "total": job.total,
                "outcomes": defaultdict(int),
            }
            for entry in job.operations
        ]
        done_subjects = 0
        done_chunks = 0
        states = {}
        for chunk_no, state, size, summary in rows:
            states[chunk_no] = state
            if state != "done":
                continue
            done_chunks += 1
            done_subjects += size
            for op_index, part in enumerate(summary or []):
                per_op[op_index]["done"] += part["done"]
                for outcome, number in part["outcomes"].items():
                    per_op[op_index]["outcomes"][outcome] += number
        readable = 0
        while readable in states and states[readable] == "done":
            readable += 1
        lines_ready = min(readable * job.chunk_size, job.total) * len(job.operations)
        started = job.started_at
        eta = None
        rate = None
        if started is not None and done_subjects:
            until = job.finished_at or self.clock.now()
            elapsed = max((until - started).total_seconds(), 1e-3)
            rate = done_subjects / elapsed
            if job.state in ("running", "paused", "queued"):
                eta = round((job.total - done_subjects) / rate, 1)
        result: dict[str, Any] = {
            "batch_id": job.batch_id,
            "state": job.state,
            "purpose": job.purpose,
            "total": job.total,
            "done": done_subjects,
            "chunks": {"done": done_chunks, "total": job.chunks, "size": job.chunk_size},
            "operations": [{**op, "outcomes": dict(op["outcomes"])} for op in per_op],
            "created_at": job.created_at.isoformat(),
            "started_at": started.isoformat() if started else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "subjects_per_s": round(rate, 1) if rate else None,
            "eta_seconds": eta,
            "pause": None,
            "stopped": None,
            "results": {
                "lines": job.total * len(job.operations),
                "lines_ready": lines_ready,
                "expires_at": (
                    (job.finished_at + timedelta(days=self.settings.batch_result_days)).isoformat()
                    if job.finished_at
                    else None
                ),
                "expired": job.results_expired_at is not None,
            },
        }
        if job.state == "paused":
            result["pause"] = {
                "code": job.pause_code,
                "since": job.paused_at.isoformat() if job.paused_at else None,
                "resume_at": job.resume_at.isoformat() if job.resume_at else None,
            }
        if job.stop_code:
            result["stopped"] = {"code": job.stop_code, "detail": job.stop_detail}
        return result

    async def ready_lines(self, job: BatchJob, after: int) -> tuple[int, list[int]]:
        """The last line readable now without a gap, and the chunks holding lines after `after` up to it."""
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(BatchChunk.chunk_no, BatchChunk.state)
                    .where(BatchChunk.batch_id == job.batch_id)
                    .order_by(BatchChunk.chunk_no)
                )
            ).all()
        per_chunk = job.chunk_size * len(job.operations)
        last = 0
        chunks = []
        for chunk_no, state in rows:
            if state != "done":
                break
            end = min((chunk_no + 1) * job.chunk_size, job.total) * len(job.operations)
            if end > after:
                chunks.append(chunk_no)
            last = end
        del per_chunk
        return last, chunks

    async def lines(self, job: BatchJob, chunks: Sequence[int], after: int, upto: int) -> AsyncIterator[bytes]:
        """The result lines numbered after+1 .. upto, one chunk read and opened at a time."""
        for chunk_no in chunks:
            async with self.engine.connect() as connection:
                row = (
                    await connection.execute(
                        select(BatchChunk.results, BatchChunk.data_key_id).where(
                            BatchChunk.batch_id == job.batch_id, BatchChunk.chunk_no == chunk_no
                        )
                    )
                ).first()
            if row is None or row[0] is None:
                return
            key = await self.keyring.get(row[1])  # type: ignore[union-attr]
            first_line = chunk_no * job.chunk_size * len(job.operations) + 1
            for offset, line in enumerate(
                open_sealed(key, row[0], _aad(job.batch_id, chunk_no, "results")).split(b"\n")
            ):
                number = first_line + offset
                if after < number <= upto:
                    yield line


def _row(job: BatchJob) -> dict[str, Any]:
    return {column.name: getattr(job, column.name) for column in BatchJob.__table__.columns}


def _not_swept(exc: Exception) -> None:
    # The database may be briefly away: the next round sweeps.
    log.warning("batch sweep failed: %s", type(exc).__name__)
