"""Times as people type them: a date or a time without an offset is Beijing time; shown back with the offset.

Asia/Shanghai has been UTC+08:00 all year since 1991 (no daylight saving), so a fixed offset is exact for every
date the gateway handles and needs no time-zone database on the host.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator

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


def _as_beijing(value: Any) -> Any:
    if isinstance(value, str):
        return parse_beijing(value)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=BEIJING)
    if isinstance(value, date):
        return datetime.combine(value, time(), BEIJING)
    return value


# An API time field: what `parse_beijing` accepts, always timezone-aware after validation.
BeijingDatetime = Annotated[AwareDatetime, BeforeValidator(_as_beijing)]


def beijing_text(moment: datetime, timespec: str = "seconds") -> str:
    """`2026-12-05 09:30:00+08:00`: Beijing time with its offset, for people."""
    if moment.tzinfo is None:
        raise ValueError("a time without an offset cannot be shown as Beijing time")
    return moment.astimezone(BEIJING).isoformat(sep=" ", timespec=timespec)


def beijing_ms(ms: int, timespec: str = "seconds") -> str:
    """`beijing_text` of a Unix time in milliseconds."""
    return beijing_text(datetime.fromtimestamp(ms / 1000, BEIJING), timespec)
