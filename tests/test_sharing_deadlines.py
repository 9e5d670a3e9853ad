"""Deadlines in Chinese working days from chinese-calendar: the 2025 National Day holiday, 调休 weekend workdays;
a provisional deadline (never a refusal) for a year the installed calendar does not know; an error only for
absurd years. Imports of a year's schedule: tests/test_calendar.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from pathlib import Path

import httpx
import pytest

from gateway.sharing.workdays import (
    FIRST_YEAR,
    LAST_YEAR,
    CalendarYearUnsupported,
    add_working_days,
    is_working_day,
    supported_years,
)
from schemas.times import china_date, end_of
from tests.helpers.calls import assert_problem
from tests.helpers.sharing_world import CHINA, World, add_item, item_body, request_body, sharing_world

FIRST, LAST = supported_years()


def test_the_calendar_knows_2025_holidays_and_adjusted_workdays() -> None:
    assert FIRST <= 2025 <= LAST
    assert not is_working_day(date(2025, 10, 1)), "National Day"
    assert not is_working_day(date(2025, 10, 8)), "the eighth day of the 2025 Golden Week"
    assert is_working_day(date(2025, 9, 28)), "Sunday 28 Sep 2025 is a 调休 working day"
    assert is_working_day(date(2025, 10, 11)), "Saturday 11 Oct 2025 is a 调休 working day"
    assert not is_working_day(date(2025, 10, 12)), "an ordinary Sunday"


@pytest.mark.parametrize(
    ("start", "days", "due"),
    [
        (date(2025, 9, 30), 10, date(2025, 10, 21)),  # across 1–8 Oct, counting Sat 11 Oct
        (date(2025, 9, 30), 1, date(2025, 10, 9)),  # the next working day is after the holiday
        (date(2025, 9, 26), 1, date(2025, 9, 28)),  # Friday → the 调休 Sunday
        (date(2025, 10, 10), 1, date(2025, 10, 11)),  # Friday → the 调休 Saturday
        (date(2025, 10, 21), 10, date(2025, 11, 4)),  # ordinary weeks: weekends off
        (date(2025, 10, 22), 5, date(2025, 10, 29)),  # the extension in the lifecycle test
    ],
)
def test_add_working_days(start: date, days: int, due: date) -> None:
    assert add_working_days(start, days) == due


def test_a_year_the_calendar_does_not_know_is_provisional_and_only_absurd_years_are_errors() -> None:
    # Weekends and the statutory holidays of the `holidays` package: 1 January is off in every year.
    assert add_working_days(date(LAST, 12, 31), 1) > date(LAST + 1, 1, 1)
    assert not is_working_day(date(LAST + 1, 1, 1))
    with pytest.raises(CalendarYearUnsupported) as info:
        add_working_days(date(LAST_YEAR, 12, 28), 10)
    assert info.value.years == (FIRST_YEAR, LAST_YEAR)
    assert str(LAST_YEAR + 1) in str(info.value)
    with pytest.raises(CalendarYearUnsupported):
        is_working_day(date(FIRST_YEAR - 1, 6, 1))


def test_deadline_days_are_beijing_days() -> None:
    # 17:00 UTC on 30 Sep is already 1 Oct in Beijing.
    assert china_date(datetime.fromisoformat("2025-09-30T17:00:00+00:00")) == date(2025, 10, 1)
    assert end_of(date(2025, 10, 21)) == datetime(2025, 10, 22, tzinfo=CHINA)


@pytest.fixture
async def world(tmp_path: Path, credit_url: str) -> AsyncIterator[World]:
    async with sharing_world("sqlite", tmp_path, credit_url) as running:
        yield running


async def test_deadline_endpoint(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.url) as anonymous:
        known = await anonymous.get("/v1/calendar/deadline", params={"start": "2025-09-30", "working_days": 10})
        unknown = await anonymous.get("/v1/calendar/deadline", params={"start": f"{LAST + 1}-03-02"})
        absurd = await anonymous.get("/v1/calendar/deadline", params={"start": f"{LAST_YEAR + 1}-03-02"})
    assert known.status_code == 200, known.text
    assert known.json()["due"] == "2025-10-21"
    assert (known.json()["provisional"], known.json()["source"]) == (False, "chinese-calendar")
    assert known.json()["calendar"].startswith("2025: chinese-calendar ")
    assert unknown.status_code == 200, unknown.text
    assert (unknown.json()["provisional"], unknown.json()["source"]) == (True, "provisional")
    body = assert_problem(absurd, 422, "calendar_year_unsupported")
    assert body["errors"][0]["field"] == "start"


async def test_submission_in_a_year_the_calendar_does_not_know_is_accepted_with_a_provisional_deadline(
    world: World,
) -> None:
    item = await add_item(world, item_body("FGW-Y"))
    world.set_clock(datetime(LAST + 1, 3, 2, 10, 0, tzinfo=CHINA))
    filed = await world.post(
        "data-officer", "/v1/sharing-requests", request_body(item["item_id"], valid_to=f"{LAST + 2}-01-01T00:00:00Z")
    )
    assert filed.status_code == 201, filed.text
    request_id = filed.json()["request_id"]
    endorsed = await world.post("data-head", f"/v1/sharing-requests/{request_id}/endorse")
    assert endorsed.status_code == 200, endorsed.text
    body = endorsed.json()
    assert body["state"] == "submitted"
    assert (body["deadline_provisional"], body["deadline_source"]) == (True, "provisional")
    assert date.fromisoformat(body["due_date"]) >= date(LAST + 1, 3, 16), "at least two weeks of weekdays"
    assert body["history"][-1]["changes"]["deadline_provisional"] == {"before": False, "after": True}
