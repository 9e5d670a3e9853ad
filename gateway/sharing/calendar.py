"""Imported holiday schedules in the database, and the calendar each process counts with, kept fresh cheaply.

Each process caches the calendar per database. At most every `CHECK_SECONDS` a lookup reads the tiny
`calendar_years` table (one row per imported year) and compares each year's `revision` with what it loaded;
only a change reloads the days. A version check rather than a plain TTL reload: the check costs one small
query, so it can run often, and an import on any node reaches every other within `CHECK_SECONDS`. The node
that imports drops its cache at once. A deadline counted in the instant between an import on another node
and that node's check is still provisional, and the sweep recomputes it (gateway/sharing/calendar_import.py).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import date, datetime
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gateway.sharing import workdays
from gateway.sharing.request_states import SUBMITTED
from gateway.sharing.schedule_file import ScheduleIn
from gateway.sharing.workdays import PROVISIONAL, Calendar, YearSchedule
from gateway.storage.models import CalendarDay, CalendarYear, SharingRequest
from schemas.times import china_date

CHECK_SECONDS = 2.0
YEARS = CalendarYear.__table__
DAYS = CalendarDay.__table__

Bind = AsyncSession | AsyncEngine
Fingerprint = tuple[tuple[int, str], ...]


async def _rows(bind: Bind, statement: object) -> list:
    if isinstance(bind, AsyncSession):
        return list((await bind.execute(statement)).all())  # type: ignore[call-overload]
    async with bind.connect() as connection:
        return list((await connection.execute(statement)).all())  # type: ignore[call-overload]


async def _fingerprint(bind: Bind) -> Fingerprint:
    rows = await _rows(bind, select(YEARS.c.year, YEARS.c.revision).order_by(YEARS.c.year))
    return tuple((int(year), str(revision)) for year, revision in rows)


async def load_schedules(bind: Bind) -> dict[int, YearSchedule]:
    """Every imported year with its days."""
    years = await _rows(bind, select(YEARS).order_by(YEARS.c.year))
    days = await _rows(bind, select(DAYS).order_by(DAYS.c.day))
    holidays: dict[int, dict[date, str]] = {}
    workdays_of: dict[int, dict[date, str]] = {}
    for row in days:
        target = holidays if row.kind == "holiday" else workdays_of
        target.setdefault(int(row.year), {})[row.day] = row.festival
    return {
        int(row.year): YearSchedule(
            year=int(row.year),
            source=row.source,
            holidays=holidays.get(int(row.year), {}),
            workdays=workdays_of.get(int(row.year), {}),
            imported_at=row.imported_at,
            imported_by=row.imported_by,
            revision=row.revision,
        )
        for row in years
    }


class _Cache:
    def __init__(self) -> None:
        self.calendar = Calendar()
        self.fingerprint: Fingerprint | None = None
        self.checked = float("-inf")

    async def get(self, bind: Bind) -> Calendar:
        now = time.monotonic()
        if now - self.checked < CHECK_SECONDS and self.fingerprint is not None:
            return self.calendar
        fingerprint = await _fingerprint(bind)
        if fingerprint != self.fingerprint:
            self.calendar = Calendar(await load_schedules(bind))
            self.fingerprint = fingerprint
            workdays.use(self.calendar)
        self.checked = now
        return self.calendar


_caches: WeakKeyDictionary[Engine, _Cache] = WeakKeyDictionary()


def _engine(bind: Bind) -> Engine:
    if isinstance(bind, AsyncSession):
        engine = bind.get_bind()
        return engine if isinstance(engine, Engine) else engine.engine
    return bind.sync_engine


async def calendar_for(bind: Bind) -> Calendar:
    """The calendar of this database, as this process last loaded it (checked for imports every few seconds)."""
    key = _engine(bind)
    cache = _caches.get(key)
    if cache is None:
        cache = _caches[key] = _Cache()
    return await cache.get(bind)


def invalidate(bind: Bind) -> None:
    """Forget this process's calendar of that database: the next lookup reloads it (after an import here)."""
    _caches.pop(_engine(bind), None)


async def store_schedule(session: AsyncSession, schedule: ScheduleIn, imported_by: str, now: datetime) -> None:
    """Write (or replace) one year's schedule in one transaction and commit it."""
    await session.execute(delete(DAYS).where(DAYS.c.year == schedule.year))
    await session.execute(delete(YEARS).where(YEARS.c.year == schedule.year))
    await session.execute(
        insert(YEARS).values(
            year=schedule.year,
            source=schedule.source,
            imported_at=now,
            imported_by=imported_by,
            revision=secrets.token_hex(8),
        )
    )
    rows = [
        {"day": day, "year": schedule.year, "kind": kind, "festival": festival}
        for kind, days in (("holiday", schedule.holidays), ("workday", schedule.workdays))
        for day, festival in days.items()
    ]
    if rows:
        await session.execute(insert(DAYS), rows)
    await session.commit()


@dataclass(frozen=True)
class YearSource:
    year: int
    source: str
    schedule: YearSchedule


def years_overview(calendar: Calendar, today: date) -> list[YearSource]:
    """Every year the library or an import knows, the first year after them, and this year and next."""
    first, last = workdays.supported_years()
    firm = set(range(first, last + 1)) | set(calendar.imported)
    years = firm | {max(firm) + 1, today.year, today.year + 1}
    return [YearSource(year, calendar.source_of(year), calendar.schedule(year)) for year in sorted(years)]


def calendar_warning(calendar: Calendar, now: datetime) -> str | None:
    """What an operator must do about the calendar now: this year unloaded, or next year from 1 November."""
    today = china_date(now)
    if calendar.source_of(today.year) == PROVISIONAL:
        return "this year not loaded"
    if today.month >= 11 and calendar.source_of(today.year + 1) == PROVISIONAL:
        return "next year not loaded"
    return None


def open_provisional() -> object:
    """The open provisional deadlines: submitted, not yet escalated, counted over an unloaded year."""
    return (
        (SharingRequest.state == SUBMITTED)
        & SharingRequest.deadline_provisional.is_(True)
        & SharingRequest.escalated_at.is_(None)
    )


async def count_open_provisional(bind: Bind) -> int:
    rows = await _rows(bind, select(func.count()).select_from(SharingRequest).where(open_provisional()))
    return int(rows[0][0])
