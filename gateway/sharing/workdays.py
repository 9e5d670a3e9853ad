"""Chinese working days (public holidays off, 调休 weekend workdays on), from the `chinese-calendar` package.

Deadlines of 《政务数据共享条例》 are counted in working days. The package knows a fixed range of years
(the State Council announces each year's holidays late in the year before); a date outside that range
raises `CalendarYearUnsupported`, never a guess from weekdays alone.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from functools import cache
from importlib.metadata import version

import chinese_calendar

# China keeps one offset all year (no daylight saving since 1991); days and deadlines are Beijing days.
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
CALENDAR = f"chinese-calendar {version('chinese-calendar')}"


class CalendarYearUnsupported(Exception):
    """The installed calendar does not know this year's holidays; upgrade `chinese-calendar`."""

    def __init__(self, day: date) -> None:
        self.day = day
        self.years = supported_years()
        super().__init__(
            f"{day.isoformat()} is outside the years {self.years[0]}–{self.years[1]} that {CALENDAR} knows;"
            " working days cannot be counted there (upgrade chinese-calendar once the year's holidays are published)"
        )


@cache
def supported_years() -> tuple[int, int]:
    years = [day.year for day in chinese_calendar.holidays]
    return min(years), max(years)


def is_working_day(day: date) -> bool:
    first, last = supported_years()
    if not first <= day.year <= last:
        raise CalendarYearUnsupported(day)
    return bool(chinese_calendar.is_workday(day))


def add_working_days(start: date, count: int) -> date:
    """The `count`-th working day after `start` (`start` itself is not counted, as for legal time limits)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    day = start
    remaining = count
    while remaining:
        day += timedelta(days=1)
        if is_working_day(day):
            remaining -= 1
    return day


def china_date(moment: datetime) -> date:
    return moment.astimezone(CHINA).date()


def end_of(day: date) -> datetime:
    """The instant a deadline day ends: midnight after it, Beijing time."""
    return datetime.combine(day + timedelta(days=1), time(0), CHINA)


def seconds_to_next_china_day(moment: datetime) -> float:
    return (end_of(china_date(moment)) - moment).total_seconds()
