"""Loading a year's schedule: store it, then count the open deadlines it concerns again, each audited.

The same recomputation runs in every sweep, so a deadline that an import on another node raced (or a
recomputation cut short by a crash) is brought in line within one sweep interval.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.sharing import workflow
from gateway.sharing.calendar import calendar_for, invalidate, store_schedule
from gateway.sharing.schedule_file import ScheduleIn
from gateway.sharing.workdays import Calendar, YearSchedule
from schemas.calendar import CalendarDayOut, CalendarImportOut, MovedDeadline, ScheduleOut
from schemas.sharing import SharingRequestOut

# Records one recomputation (its outcome and the request after it) in the audit log; raises if it cannot.
AuditTransition = Callable[[SharingRequestOut, workflow.Outcome], Awaitable[None]]


@dataclass
class Recomputed:
    deadlines: list[MovedDeadline] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return sum(1 for change in self.deadlines if change.due_date != change.due_date_before)


async def recompute_provisional(
    sessions: async_sessionmaker,
    now: datetime,
    reason: dict[str, Any],
    audit: AuditTransition,
    year: int | None = None,
) -> Recomputed:
    """Count every open provisional deadline again with the calendar as it is now (and, after an import of
    `year`, every open deadline counted over that year); audit each one that changed."""
    async with sessions() as session:
        ids = await workflow.deadlines_to_recompute(session, year)
    done = Recomputed()
    for request_id in ids:
        async with sessions() as session:
            result = await workflow.recompute_deadline(session, request_id, now, reason)
            if result is None:
                continue
            outcome, before = result
            out = await workflow.outcome_out(session, outcome, now)
        await audit(out, outcome)
        assert out.due_date is not None
        done.deadlines.append(
            MovedDeadline(
                request_id=request_id,
                due_date_before=before,
                due_date=out.due_date,
                deadline_provisional=out.deadline_provisional,
            )
        )
    return done


def schedule_out(calendar: Calendar, year: int) -> ScheduleOut:
    schedule: YearSchedule = calendar.schedule(year)

    def days(listed: dict[date, str]) -> list[CalendarDayOut]:
        return [CalendarDayOut(date=day, festival=name) for day, name in sorted(listed.items())]

    return ScheduleOut(
        year=year,
        source=calendar.source_of(year),  # type: ignore[arg-type]
        notice=schedule.source,
        imported_at=schedule.imported_at,
        imported_by=schedule.imported_by,
        holidays=len(schedule.holidays),
        workdays=len(schedule.workdays),
        holiday_days=days(dict(schedule.holidays)),
        workday_days=days(dict(schedule.workdays)),
    )


async def import_schedule(
    sessions: async_sessionmaker, schedule: ScheduleIn, imported_by: str, now: datetime, audit: AuditTransition
) -> CalendarImportOut:
    """Store the checked schedule (replacing that year's), then recompute the open provisional deadlines."""
    async with sessions() as session:
        await store_schedule(session, schedule, imported_by, now)
        invalidate(session)
        calendar = await calendar_for(session)
    reason = {"rule": f"calendar {schedule.year} imported by {imported_by}", "source": schedule.source}
    recomputed = await recompute_provisional(sessions, now, reason, audit, schedule.year)
    return CalendarImportOut(
        schedule=schedule_out(calendar, schedule.year),
        recomputed=len(recomputed.deadlines),
        moved=recomputed.moved,
        deadlines=recomputed.deadlines,
    )
