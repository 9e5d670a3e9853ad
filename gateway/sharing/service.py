"""The sharing workflow on one node: its clock, the overdue rule, and the sweep that applies what time changed.

Every node sweeps; a transition is a versioned update, so when two nodes race for the same request one
wins and the other changes nothing. Each transition the sweep makes is audited as the `system` actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from gateway.audit import AuditEvent, AuditUnavailable, new_request_id
from gateway.runtime import Runtime
from gateway.sharing.workflow import Outcome, apply_time, due_transitions, outcome_out
from schemas.sharing import SharingRequestOut

log = logging.getLogger("msjx.sharing")


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    def __init__(self, runtime: Runtime, clock: Callable[[], datetime] = utc_now) -> None:
        self.runtime = runtime
        self.clock = clock
        self.overdue_action = runtime.settings.sharing_overdue_action
        self.interval = runtime.settings.sharing_sweep_seconds
        self._task: asyncio.Task[None] | None = None

    def now(self) -> datetime:
        # Stored datetimes are UTC: SQLite keeps the wall time it is given and drops the offset.
        return self.clock().astimezone(UTC)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sharing-sweep")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # a failed sweep is retried at the next tick; the request path never depends on it
                log.exception("sharing sweep failed")
            await asyncio.sleep(self.interval)

    async def sweep(self) -> list[SharingRequestOut]:
        """Escalate (or approve) overdue requests, start approved grants, expire ended ones; audit each."""
        now = self.now()
        async with self.runtime.sessions() as session:
            ids = await due_transitions(session, now)
        changed = []
        for request_id in ids:
            async with self.runtime.sessions() as session:
                outcome = await apply_time(session, request_id, now, self.overdue_action)
                if outcome is None:
                    continue
                out = await outcome_out(session, outcome, now)
            if outcome.grants_changed:
                self.runtime.directory.invalidate()
            try:
                await self.runtime.audit.append(
                    transition_event(out, outcome, caller_id="system", department=None, roles=("system",))
                )
            except AuditUnavailable:
                log.error("transition %s of %s is committed but could not be audited", out.state, request_id)
            changed.append(out)
        return changed
