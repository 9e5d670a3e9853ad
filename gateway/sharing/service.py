"""The sharing workflow on one node: its clock, the overdue rule, and the sweep that applies what time changed.

Every node sweeps; a transition is a versioned update, so when two nodes race for the same request one
wins and the other changes nothing. Each transition the sweep makes is audited as the `system` actor.
The sweep also counts open provisional deadlines again when the calendar has changed since (an import).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from gateway.access.directory import Directory, GrantInfo
from gateway.audit.writer import AuditEvent, AuditUnavailable, AuditWriter, new_request_id
from gateway.clock import Clock, Periodic, periodic
from gateway.sharing.calendar import calendar_for, calendar_warning
from gateway.sharing.calendar_import import recompute_provisional
from gateway.sharing.obligations import (
    delivery_dues_to_recompute,
    overdue_deliveries,
    recompute_delivery_due,
    record_first_use,
    record_overdue_delivery,
)
from gateway.sharing.workflow import Outcome, apply_time, due_transitions, outcome_out
from gateway.storage.health import is_database_outage
from schemas.sharing import SharingRequestOut
from schemas.times import china_date

if TYPE_CHECKING:  # the type only: the runtime is built above this room
    pass

log = logging.getLogger("msjx.sharing")


def transition_event(
    out: SharingRequestOut, outcome: Outcome, *, caller_id: str, department: str | None, roles: tuple[str, ...]
) -> AuditEvent:
    """An audit record of a transition made outside a caller's exchange (the sweep, or a cascade of one)."""
    action = out.history[-1].action if out.history else "change"
    return AuditEvent(
        event=f"sharing.{action}",
        request_id=new_request_id(),
        decision="allowed",
        status_code=200,
        response_body=orjson.dumps(out.model_dump(mode="json")),
        caller_id=caller_id,
        department=department,
        roles=roles,
        path=f"/v1/sharing-requests/{out.request_id}",
        service=outcome.item.service,
        operation=outcome.item.operation,
        purpose=out.purpose.code,
        grant_id=out.grants[0].grant_id if out.grants else None,
    )


class SharingService:
    """This node's sharing clock and sweep; it reads and writes through the stores it is given."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        sessions: async_sessionmaker,
        directory: Directory,
        audit: AuditWriter,
        overdue_action: str,
        interval: float,
        clock: Clock,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.directory = directory
        self.audit = audit
        self.clock = clock
        self.overdue_action = overdue_action
        self.interval = interval
        self._task: Periodic | None = None
        # Grants whose first successful call this node has seen: their delivery is recorded once, in the background.
        self._first_uses: set[str] = set()
        self._recording: set[asyncio.Task[None]] = set()

    def now(self) -> datetime:
        # Stored datetimes are UTC: SQLite keeps the wall time it is given and drops the offset.
        return self.clock.now().astimezone(UTC)

    async def start(self) -> None:
        await self.warn_about_calendar()
        self._task = periodic("sharing-sweep", self.interval, self.sweep, run_first=True, on_error=self._sweep_failed)

    async def warn_about_calendar(self) -> str | None:
        """Log once at start when this year's (or, from 1 November, next year's) holiday schedule is missing."""
        try:
            warning = calendar_warning(await calendar_for(self.engine), self.now())
        except Exception as exc:  # the database may be down at start; the sweep and /readyz say so
            log.warning("calendar not checked at start: %s", type(exc).__name__)
            return None
        if warning is not None:
            today = china_date(self.now())
            year = today.year if warning.startswith("this") else today.year + 1
            log.warning(
                "calendar: %s (%d): deadlines reaching into it are provisional until an operator imports the State"
                " Council's notice with `msjx-gateway calendar import FILE` (docs/sharing.md)",
                warning,
                year,
            )
        return warning

    def note_first_use(self, grant: GrantInfo) -> None:
        """A call under an undelivered grant succeeded: record its delivery once, after the answer, off its path."""
        if grant.grant_id in self._first_uses:
            return
        self._first_uses.add(grant.grant_id)
        task = asyncio.get_running_loop().create_task(self._record_first_use(grant.grant_id), name="first-use")
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record_first_use(self, grant_id: str) -> None:
        now = self.now()
        try:
            for attempt in range(3):
                try:
                    async with self.sessions() as session:
                        outcome = await record_first_use(session, grant_id, now)
                        if outcome is None:
                            return
                        out = await outcome_out(session, outcome, now)
                    break
                except StaleDataError:  # the request changed meanwhile (a decision, another node): read it again
                    if attempt == 2:
                        raise
        except Exception:  # the next call under the grant tries again: delivery is a record, never a gate
            log.exception("recording the first use of grant %s failed", grant_id)
            self._first_uses.discard(grant_id)
            return
        self.directory.invalidate()
        try:
            await self.audit.append(
                transition_event(out, outcome, caller_id="system", department=None, roles=("system",))
            )
        except AuditUnavailable:
            log.error("delivery of grant %s by first use is committed but could not be audited", grant_id)

    async def settle(self) -> None:
        """Wait for first-use records in progress (tests, and shutdown)."""
        while self._recording:
            await asyncio.gather(*list(self._recording), return_exceptions=True)

    async def close(self) -> None:
        await self.settle()
        if self._task is not None:
            await self._task.stop()
            self._task = None

    def _sweep_failed(self, exc: Exception) -> None:
        # Retried at the next tick; the request path never depends on it.
        if is_database_outage(exc):  # logged once for the outage by the database's Dependency
            self.directory.health.failed(exc)
        else:
            log.error("sharing sweep failed", exc_info=exc)

    async def sweep(self) -> list[SharingRequestOut]:
        """Escalate (or approve) overdue requests, start approved grants, expire ended ones, record deliveries
        the provider missed; audit each."""
        now = self.now()
        async with self.sessions() as session:
            ids = await due_transitions(session, now)
        changed = []
        for request_id in ids:
            async with self.sessions() as session:
                outcome = await apply_time(session, request_id, now, self.overdue_action)
                if outcome is None:
                    continue
                out = await outcome_out(session, outcome, now)
            if outcome.grants_changed:
                self.directory.invalidate()
            try:
                await self.audit.append(
                    transition_event(out, outcome, caller_id="system", department=None, roles=("system",))
                )
            except AuditUnavailable:
                log.error("transition %s of %s is committed but could not be audited", out.state, request_id)
            changed.append(out)
        changed += await self._delivery_duties(now)
        await self.recompute_deadlines(now)
        return changed

    async def _delivery_duties(self, now: datetime) -> list[SharingRequestOut]:
        """Provisional delivery days counted again after an import, then missed ones recorded; each audited."""
        async with self.sessions() as session:
            recount = await delivery_dues_to_recompute(session)
            late = await overdue_deliveries(session, now)
        steps: list[tuple[str, Callable[..., Awaitable[Outcome | None]]]] = [
            *((grant_id, recompute_delivery_due) for grant_id in recount),
            *((request_id, record_overdue_delivery) for request_id in late),
        ]
        changed = []
        for key, step in steps:
            try:
                async with self.sessions() as session:
                    outcome = await step(session, key, now)
                    if outcome is None:
                        continue
                    out = await outcome_out(session, outcome, now)
            except StaleDataError:  # another node did it, or the request changed: the next sweep looks again
                continue
            try:
                await self.audit.append(
                    transition_event(out, outcome, caller_id="system", department=None, roles=("system",))
                )
            except AuditUnavailable:
                log.error("delivery duty of %s is recorded but could not be audited", key)
            changed.append(out)
        return changed

    async def recompute_deadlines(self, now: datetime) -> int:
        """Open provisional deadlines whose calendar changed since they were counted (an import raced, a crash
        cut the import's own recomputation short): count them again, each audited. Returns how many changed."""

        async def audit(out: SharingRequestOut, outcome: Outcome) -> None:
            try:
                await self.audit.append(
                    transition_event(out, outcome, caller_id="system", department=None, roles=("system",))
                )
            except AuditUnavailable:
                log.error("deadline of %s is recomputed but could not be audited", out.request_id)

        reason = {"rule": "the calendar changed since this deadline was counted"}
        done = await recompute_provisional(self.sessions, now, reason, audit)
        return len(done.deadlines)
