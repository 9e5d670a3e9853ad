"""Times as people type them: a date or a time without an offset is Beijing time; shown back with the offset.

Asia/Shanghai has been UTC+08:00 all year since 1991 (no daylight saving), so a fixed offset is exact for every
date the gateway handles and needs no time-zone database on the host.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator
from pydantic_core import PydanticCustomError

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
EXPECTED = (
    "expected a date (YYYY-MM-DD, from 00:00 Beijing time) or a time (e.g. 2026-12-05T09:30:00, Beijing time"
    " unless it has an offset such as Z or +08:00)"
)


def parse_beijing(text: str) -> datetime:
    """A date (its 00:00 in Beijing), a naive time (in Beijing) or a time with an offset; ValueError otherwise."""
    text = text.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), BEIJING)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r}: {EXPECTED}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=BEIJING)


# Pydantic reads an integer, a float or a numeric string as Unix time; a client that sent one meant something else.
_NUMERIC = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def is_number(value: Any) -> bool:
    """A JSON number, or text that is one: never a date or a time here (`valid_from: 0` is not 1970)."""
    if isinstance(value, str):
        return bool(_NUMERIC.fullmatch(value))
    return isinstance(value, bool | int | float | Decimal)


def _as_beijing(value: Any) -> Any:
    if is_number(value):
        raise PydanticCustomError("datetime_number", f"a number is not a time: {EXPECTED}")
    if isinstance(value, str):
        return parse_beijing(value)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=BEIJING)
    if isinstance(value, date):
        return datetime.combine(value, time(), BEIJING)
    return value


def _a_day(value: Any) -> Any:
    if is_number(value):
        raise PydanticCustomError("date_number", "a date is YYYY-MM-DD (e.g. 2025-09-30), not a number")
    return value


# An API time field: what `parse_beijing` accepts, always timezone-aware after validation.
BeijingDatetime = Annotated[AwareDatetime, BeforeValidator(_as_beijing)]
# An API date field: YYYY-MM-DD, never a number.
Day = Annotated[date, BeforeValidator(_a_day)]


def beijing_text(moment: datetime, timespec: str = "seconds") -> str:
    """`2026-12-05 09:30:00+08:00`: Beijing time with its offset, for people."""
    if moment.tzinfo is None:
        raise ValueError("a time without an offset cannot be shown as Beijing time")
    return moment.astimezone(BEIJING).isoformat(sep=" ", timespec=timespec)


def beijing_ms(ms: int, timespec: str = "seconds") -> str:
    """`beijing_text` of a Unix time in milliseconds."""
    return beijing_text(datetime.fromtimestamp(ms / 1000, BEIJING), timespec)


def china_date(moment: datetime) -> date:
    """The Beijing calendar day of an instant: the day quotas, deadlines and working days count in."""
    return moment.astimezone(BEIJING).date()


def end_of(day: date) -> datetime:
    """The instant a deadline day ends: midnight after it, Beijing time."""
    return datetime.combine(day + timedelta(days=1), time(0), BEIJING)


def seconds_to_next_china_day(moment: datetime) -> float:
    return (end_of(china_date(moment)) - moment).total_seconds()
