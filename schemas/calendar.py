"""API bodies of the working-day calendar: years and their sources, a year's schedule, an import's outcome."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

Source = Literal["imported", "chinese-calendar", "provisional"]


class CalendarDayOut(BaseModel):
    date: date
    festival: str = Field(description="the festival the day belongs to, as the source names it")


class CalendarYearOut(BaseModel):
    year: int
    source: Source = Field(description="imported (an operator loaded it), chinese-calendar (the library), provisional")
    notice: str = Field(description="what the days come from: the imported notice's title, or the library or rule")
    imported_at: datetime | None = None
    imported_by: str | None = None
    holidays: int = Field(description="days off listed")
    workdays: int = Field(description="调休 weekend workdays listed")


class ScheduleOut(CalendarYearOut):
    holiday_days: list[CalendarDayOut]
    workday_days: list[CalendarDayOut]


class MovedDeadline(BaseModel):
    request_id: str
    due_date_before: date
    due_date: date
    deadline_provisional: bool


class CalendarImportOut(BaseModel):
    schedule: ScheduleOut
    recomputed: int = Field(description="open deadlines counted again with a different result")
    moved: int = Field(description="of those, how many got another due day")
    deadlines: list[MovedDeadline]
