"""Chinese working days (public holidays off, 调休 weekend workdays on), year by year from the best source there is.

Deadlines of 《政务数据共享条例》 are counted in working days. Each year's days come from, in this order:
an imported schedule (the State Council's notice, loaded by an operator: gateway/sharing/calendar.py); the
`chinese-calendar` package for the years it knows; otherwise a provisional rule, weekends plus the statutory
holidays that the `holidays` package gives for China that year. A count that touched a provisional year is
marked provisional, and importing that year recomputes it. Only a year outside every source's range
(`FIRST_YEAR`–`LAST_YEAR`) raises `CalendarYearUnsupported`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import cache
from importlib.metadata import version

import chinese_calendar
import holidays

from schemas.errors import MsjxError

# China keeps one offset all year (no daylight saving since 1991); days and deadlines are Beijing days.
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
CALENDAR = f"chinese-calendar {version('chinese-calendar')}"
PROVISIONAL_RULE = f"weekends and the statutory holidays of holidays {version('holidays')}"

IMPORTED = "imported"
LIBRARY = "chinese-calendar"
PROVISIONAL = "provisional"

# The years the `holidays` package covers for China; beyond them no source knows anything.
FIRST_YEAR: int = holidays.China.start_year
LAST_YEAR: int = holidays.China.end_year


class CalendarYearUnsupported(MsjxError):
    """A day outside every calendar source's years: absurd input, not a year waiting for its schedule."""

    def __init__(self, day: date) -> None:
        self.day = day
        self.years = (FIRST_YEAR, LAST_YEAR)
        super().__init__(
            f"{day.isoformat()} is outside the years {FIRST_YEAR}–{LAST_YEAR} that any calendar source covers"
        )


@cache
def supported_years() -> tuple[int, int]:
    """The years `chinese-calendar` knows (firm, without an import)."""
    years = [day.year for day in chinese_calendar.holidays]
    return min(years), max(years)


@cache
def provisional_days(year: int) -> tuple[dict[date, str], frozenset[date]]:
    """The days off and the weekend workdays that the `holidays` package gives for China in `year`."""
    listed = holidays.China(years=year, language="zh_CN")
    days_off = {day: name for day, name in listed.items() if day.year == year}
    workdays = frozenset(day for day in listed.weekend_workdays if day.year == year)
    return days_off, workdays


@dataclass(frozen=True)
class YearSchedule:
    """One year's holidays and 调休 workdays by festival, as imported from the State Council's notice."""

    year: int
    source: str
    holidays: Mapping[date, str]
    workdays: Mapping[date, str]
    imported_at: datetime | None = None
    imported_by: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class Count:
    """A deadline: the due day, whether it is provisional, and the source of each year the count touched."""

    due: date
    sources: dict[int, str] = field(default_factory=dict)

    @property
    def provisional(self) -> bool:
        return PROVISIONAL in self.sources.values()

    @property
    def source(self) -> str:
        """`provisional` when any counted year is; else the source of the year the due day is in."""
        if self.provisional:
            return PROVISIONAL
        return self.sources.get(self.due.year, LIBRARY)

    def then(self, later: Count) -> Count:
        """This count followed by `later` (an extension counted from this due day)."""
        return Count(later.due, {**self.sources, **later.sources})


class Calendar:
    """Working days from the imported schedules, then `chinese-calendar`, then the provisional rule."""

    def __init__(self, imported: Mapping[int, YearSchedule] | None = None) -> None:
        self.imported: dict[int, YearSchedule] = dict(imported or {})

    def source_of(self, year: int) -> str:
        if not FIRST_YEAR <= year <= LAST_YEAR:
            raise CalendarYearUnsupported(date(max(1, min(year, 9999)), 1, 1))
        if year in self.imported:
            return IMPORTED
        first, last = supported_years()
        return LIBRARY if first <= year <= last else PROVISIONAL

    def is_working_day(self, day: date) -> bool:
        if not FIRST_YEAR <= day.year <= LAST_YEAR:
            raise CalendarYearUnsupported(day)
        source = self.source_of(day.year)
        if source == IMPORTED:
            schedule = self.imported[day.year]
            if day in schedule.workdays:
                return True
            return day.weekday() < 5 and day not in schedule.holidays
        if source == LIBRARY:
            # chinese_calendar.is_workday's own rule, without its range check (min/max over every holiday each
            # call: ~80 µs a day); the year is checked above.
            return day in chinese_calendar.workdays or (day.weekday() < 5 and day not in chinese_calendar.holidays)
        days_off, workdays = provisional_days(day.year)
        return day in workdays or (day.weekday() < 5 and day not in days_off)

    def add_working_days(self, start: date, count: int) -> Count:
        """The `count`-th working day after `start` (`start` itself is not counted, as for legal time limits)."""
        if count < 1:
            raise ValueError("count must be at least 1")
        day = start
        remaining = count
        sources: dict[int, str] = {}
        while remaining:
            day += timedelta(days=1)
            if day.year not in sources:
                if not FIRST_YEAR <= day.year <= LAST_YEAR:
                    raise CalendarYearUnsupported(day)
                sources[day.year] = self.source_of(day.year)
            if self.is_working_day(day):
                remaining -= 1
        return Count(day, sources)

    def schedule(self, year: int) -> YearSchedule:
        """The year's holidays and weekend workdays as its source has them (for `calendar show`)."""
        source = self.source_of(year)
        if source == IMPORTED:
            return self.imported[year]
        if source == LIBRARY:
            off = {day: name for day, name in chinese_calendar.holidays.items() if day.year == year}
            on = {day: name for day, name in chinese_calendar.workdays.items() if day.year == year}
            return YearSchedule(year, CALENDAR, off, on)
        days_off, workdays = provisional_days(year)
        return YearSchedule(year, PROVISIONAL_RULE, days_off, dict.fromkeys(workdays, ""))

    def describe(self, sources: Mapping[int, str]) -> str:
        """What counted each year, e.g. '2026: chinese-calendar 1.11.0; 2027: provisional (weekends and …)'."""
        parts = []
        for year, source in sorted(sources.items()):
            if source == IMPORTED:
                parts.append(f"{year}: imported ({self.imported[year].source})")
            elif source == LIBRARY:
                parts.append(f"{year}: {CALENDAR}")
            else:
                parts.append(f"{year}: provisional ({PROVISIONAL_RULE})")
        return "; ".join(parts)


# The calendar most recently loaded by this process (gateway/sharing/calendar.py keeps it fresh); code without a
# database session at hand counts with it. The workflow loads its own through `calendar_for(session)`.
_latest = Calendar()


def use(calendar: Calendar) -> None:
    global _latest
    _latest = calendar


def is_working_day(day: date) -> bool:
    return _latest.is_working_day(day)


def add_working_days(start: date, count: int) -> date:
    """The `count`-th working day after `start` by this process's latest calendar (see `Calendar`)."""
    return _latest.add_working_days(start, count).due
