"""The holiday schedule as data (issue 12): provisional deadlines past the library's last year, imports that move
them, the checks of a schedule file, and the warnings, on SQLite and on PostgreSQL + Redis.

The workflow's clock is injected (tests/helpers/sharing_world.py). `tests/fixtures/calendar-2027.TEST-FIXTURE.yaml` is a
made-up schedule, not the official 2027 one. chinese-calendar is held to the years it knew when this was written
(to 2026), so that a later release that knows 2027 does not turn these provisional deadlines into firm ones.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import chinese_calendar
import httpx
import pytest

from gateway.sharing import calendar, workdays
from gateway.sharing.calendar import store_schedule
from gateway.sharing.schedule_file import ScheduleInvalid, read_schedule
from gateway.sharing.workdays import Calendar, CalendarYearUnsupported, YearSchedule
from tests.helpers.calls import assert_problem
from tests.helpers.processes import CLI
from tests.helpers.sharing_world import CHINA, World, add_item, item_body, real_now, request_body, sharing_world

FIXTURE = Path(__file__).parent / "fixtures" / "calendar-2027.TEST-FIXTURE.yaml"
REQUESTS = "/v1/sharing-requests"
# Thursday 24 December 2026: ten working days reach into 2027.
CHRISTMAS_EVE = datetime(2026, 12, 24, 10, 0, tzinfo=CHINA)
VALID_TO = "2027-12-31T00:00:00Z"


@pytest.fixture(autouse=True)
def _library_knows_up_to_2026(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workdays, "supported_years", lambda: (2004, 2026))


def fixture_schedule() -> YearSchedule:
    parsed = read_schedule(FIXTURE.read_text(), csv_format=False)
    return YearSchedule(parsed.year, parsed.source, parsed.holidays, parsed.workdays)


# --- the rule ------------------------------------------------------------------------------------------------


def test_a_deadline_across_the_year_boundary_is_provisional_then_follows_the_import() -> None:
    # 24 Dec 2026 (Thu) + 10: Dec 25, 28, 29, 30, 31 are 1–5 (chinese-calendar); 1 Jan 2027 is 元旦 in the
    # `holidays` package, so Jan 4–8 are 6–10.
    provisional = Calendar().add_working_days(date(2026, 12, 24), 10)
    assert provisional.due == date(2027, 1, 8)
    assert provisional.provisional
    assert provisional.source == "provisional"
    assert provisional.sources == {2026: "chinese-calendar", 2027: "provisional"}
    # The fixture: 1–4 Jan off, Saturday 9 Jan a 调休 workday, so Jan 5–8 are 6–9 and Sat 9 Jan is the 10th.
    firm = Calendar({2027: fixture_schedule()}).add_working_days(date(2026, 12, 24), 10)
    assert firm.due == date(2027, 1, 9)
    assert not firm.provisional
    assert firm.sources == {2026: "chinese-calendar", 2027: "imported"}
    # Across the boundary by one day: New Year's Eve + 1 skips 元旦 and the weekend either way.
    assert Calendar().add_working_days(date(2026, 12, 31), 1).due == date(2027, 1, 4)
    assert Calendar({2027: fixture_schedule()}).add_working_days(date(2026, 12, 31), 1).due == date(2027, 1, 5)
    # A day inside 2026 alone never is provisional.
    assert not Calendar().add_working_days(date(2026, 12, 1), 10).provisional


def test_the_library_years_count_exactly_as_chinese_calendar_does() -> None:
    calendar = Calendar()
    day = date(2004, 1, 1)
    while day.year <= 2026:
        assert calendar.is_working_day(day) == chinese_calendar.is_workday(day), day
        day += timedelta(days=1)


def test_an_imported_year_overrides_the_library() -> None:
    # 2025 by chinese-calendar: 1 Oct is off. An import that says otherwise wins.
    schedule = YearSchedule(2025, "override", {date(2025, 10, 2): "test"}, {})
    assert not Calendar().is_working_day(date(2025, 10, 1))
    assert Calendar({2025: schedule}).is_working_day(date(2025, 10, 1))
    assert Calendar({2025: schedule}).source_of(2025) == "imported"
    assert Calendar().source_of(2025) == "chinese-calendar"


def test_only_a_year_outside_every_source_is_refused() -> None:
    assert Calendar().add_working_days(date(2099, 6, 1), 10).provisional
    with pytest.raises(CalendarYearUnsupported):
        Calendar().add_working_days(date(2100, 12, 28), 10)
    with pytest.raises(CalendarYearUnsupported):
        Calendar().is_working_day(date(1949, 6, 1))


# --- the file ------------------------------------------------------------------------------------------------


def test_the_documented_sample_agrees_with_chinese_calendar_on_every_day_of_2026() -> None:
    sample = Path(__file__).parent.parent / "docs" / "holiday-schedule.sample.yaml"
    parsed = read_schedule(sample.read_text(), csv_format=False)
    imported = Calendar({2026: YearSchedule(2026, parsed.source, parsed.holidays, parsed.workdays)})
    library = Calendar()
    days = [date(2026, 1, 1) + timedelta(days=offset) for offset in range(365)]
    assert [imported.is_working_day(day) for day in days] == [library.is_working_day(day) for day in days]
    assert imported.source_of(2026) == "imported"


def test_a_workday_on_a_wednesday_is_refused_with_its_line() -> None:
    text = FIXTURE.read_text().replace("{date: 2027-02-13, festival: 春节}", "{date: 2027-01-06, festival: 元旦}")
    line = next(number for number, content in enumerate(text.splitlines(), 1) if "2027-01-06" in content)
    with pytest.raises(ScheduleInvalid) as info:
        read_schedule(text, csv_format=False)
    [fault] = info.value.faults
    assert (fault.line, fault.code) == (line, "workday_not_weekend")
    assert "Wednesday" in fault.message
    csv_text = "date,kind,festival\n2027-01-01,holiday,元旦\n2027-01-06,workday,元旦\n"
    with pytest.raises(ScheduleInvalid) as info:
        read_schedule(csv_text, csv_format=True, year=2027, source="test")
    assert [(fault.line, fault.code) for fault in info.value.faults] == [(3, "workday_not_weekend")]


def test_every_fault_is_named_at_once_with_its_line() -> None:
    text = "\n".join(
        [
            "year: 2027",  # 1
            "source: test",  # 2
            "holidays:",  # 3
            "  - {date: 2027-01-01, festival: 元旦}",  # 4
            "  - {date: 2028-01-01, festival: 元旦}",  # 5 outside the year
            "  - {date: 2027-02-06}",  # 6 no festival
            "  - {date: 2027-02-07, festival: 春节}",  # 7
            "  - {date: 2027-02-3x, festival: 春节}",  # 8 not a date
            "workdays:",  # 9
            "  - {date: 2027-02-07, festival: 春节}",  # 10 also a holiday
            "  - {day: 2027-02-20, festival: 春节}",  # 11 unknown key, no date
        ]
    )
    with pytest.raises(ScheduleInvalid) as info:
        read_schedule(text, csv_format=False)
    found = [(fault.line, fault.code) for fault in info.value.faults]
    assert found == [
        (5, "date_outside_year"),
        (6, "festival_missing"),
        (8, "date_invalid"),
        (10, "holiday_and_workday"),
        (11, "key_unknown"),
        (11, "date_missing"),
    ]
    with pytest.raises(ScheduleInvalid) as info:
        read_schedule("date,kind,festival\n2027-01-01,holiday,元旦\n", csv_format=True)
    assert {fault.code for fault in info.value.faults} == {"year_missing", "source_missing"}


# --- the workflow, over HTTP ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def world(request: pytest.FixtureRequest, tmp_path: Path, credit_url: str) -> AsyncIterator[World]:
    async with sharing_world(request.param, tmp_path, credit_url) as running:
        running.set_clock(CHRISTMAS_EVE)
        yield running


async def submitted(world: World, code: str) -> dict[str, Any]:
    item = await add_item(world, item_body(code))
    filed = await world.post("data-officer", REQUESTS, request_body(item["item_id"], valid_to=VALID_TO))
    assert filed.status_code == 201, filed.text
    endorsed = await world.post("data-head", f"{REQUESTS}/{filed.json()['request_id']}/endorse")
    assert endorsed.status_code == 200, endorsed.text
    return endorsed.json()


async def import_fixture(world: World, text: str | None = None) -> httpx.Response:
    async with world.client("admin") as client:
        return await client.post(
            "/v1/calendar/schedules",
            content=(text or FIXTURE.read_text()).encode(),
            headers={"content-type": "application/yaml"},
        )


async def gauge(world: World) -> float:
    async with httpx.AsyncClient(base_url=world.url) as client:
        text = (await client.get("/metrics")).text
    match = re.search(r"^msjx_calendar_provisional_deadlines ([0-9.]+)$", text, re.MULTILINE)
    assert match is not None, "the gauge is exported"
    return float(match.group(1))


async def test_a_request_on_24_december_gets_a_provisional_deadline_that_the_import_moves(world: World) -> None:
    body = await submitted(world, "FGW-CAL-1")
    request_id = body["request_id"]
    assert (body["state"], body["due_date"]) == ("submitted", "2027-01-08")
    assert (body["deadline_provisional"], body["deadline_source"]) == (True, "provisional")

    async with httpx.AsyncClient(base_url=world.url) as anonymous:
        deadline = await anonymous.get("/v1/calendar/deadline", params={"start": "2026-12-24", "working_days": 10})
        ready = await anonymous.get("/readyz")
    assert deadline.status_code == 200, deadline.text
    assert deadline.json()["due"] == "2027-01-08"
    assert (deadline.json()["provisional"], deadline.json()["source"]) == (True, "provisional")
    assert deadline.json()["sources"] == {"2026": "chinese-calendar", "2027": "provisional"}
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["calendar"] == "next year not loaded"
    assert ready.json()["calendar"] == "next year not loaded"
    assert await gauge(world) == 1

    imported = await import_fixture(world)
    assert imported.status_code == 201, imported.text
    result = imported.json()
    assert (result["recomputed"], result["moved"]) == (1, 1)
    assert result["deadlines"] == [
        {
            "request_id": request_id,
            "due_date_before": "2027-01-08",
            "due_date": "2027-01-09",
            "deadline_provisional": False,
        }
    ]
    assert result["schedule"]["source"] == "imported"
    assert result["schedule"]["workday_days"][0] == {"date": "2027-01-09", "festival": "元旦"}

    after = (await world.get("admin", f"{REQUESTS}/{request_id}")).json()
    assert (after["due_date"], after["deadline_provisional"], after["deadline_source"]) == (
        "2027-01-09",
        False,
        "imported",
    )
    last = after["history"][-1]
    assert (last["action"], last["actor"], last["to_state"]) == ("recompute_deadline", "system", "submitted")
    assert last["changes"]["due_date"] == {"before": "2027-01-08", "after": "2027-01-09"}
    assert last["note"]["due_date_before"] == "2027-01-08"
    assert last["note"]["rule"] == "calendar 2027 imported by admin"

    [recompute] = await world.audit_records("sharing.recompute_deadline")
    assert (recompute["caller_id"], recompute["decision"]) == ("system", "allowed")
    assert (await world.opened_response(recompute))["due_date"] == "2027-01-09"
    [record] = await world.audit_records("admin.calendar.import")
    assert (record["caller_id"], record["status_code"]) == ("admin", 201)

    async with httpx.AsyncClient(base_url=world.url) as anonymous:
        deadline = await anonymous.get("/v1/calendar/deadline", params={"start": "2026-12-24", "working_days": 10})
        ready = await anonymous.get("/readyz")
    assert deadline.json()["due"] == "2027-01-09"
    assert (deadline.json()["provisional"], deadline.json()["source"]) == (False, "imported")
    assert deadline.json()["sources"] == {"2026": "chinese-calendar", "2027": "imported"}
    assert ready.json()["checks"]["calendar"] == "ok"
    assert "calendar" not in ready.json()
    assert await gauge(world) == 0

    years = await world.get("admin", "/v1/calendar/years")
    assert years.status_code == 200, years.text
    by_year = {entry["year"]: entry for entry in years.json()}
    assert by_year[2027]["source"] == "imported"
    assert by_year[2027]["imported_by"] == "admin"
    assert by_year[2026]["source"] == "chinese-calendar"
    assert by_year[2028]["source"] == "provisional"  # the first year after the known ones is listed too
    shown = await world.get("admin", "/v1/calendar/years/2027")
    assert shown.json()["holidays"] == 27 and shown.json()["workdays"] == 5
    assert_problem(await world.get("admin", "/v1/calendar/years/2101"), 422, "calendar_year_unsupported")

    # A corrected schedule (Saturday 9 Jan no longer a workday) moves the firm deadline it counted: Mon 11 Jan.
    corrected = await import_fixture(world, FIXTURE.read_text().replace("  - {date: 2027-01-09, festival: 元旦}\n", ""))
    assert corrected.status_code == 201, corrected.text
    assert [(moved["due_date_before"], moved["due_date"]) for moved in corrected.json()["deadlines"]] == [
        ("2027-01-09", "2027-01-11")
    ]
    after = (await world.get("admin", f"{REQUESTS}/{request_id}")).json()
    assert (after["due_date"], after["deadline_provisional"]) == ("2027-01-11", False)
    assert len(await world.audit_records("sharing.recompute_deadline")) == 2
    assert_problem(await world.get("data-officer", "/v1/calendar/years"), 403, "role_forbidden")


async def test_an_extension_across_the_boundary_and_escalation_follow_the_same_rule(world: World) -> None:
    # Thursday 10 Dec 2026 + 10 working days: 24 Dec, a deadline chinese-calendar knows.
    world.set_clock(datetime(2026, 12, 10, 10, 0, tzinfo=CHINA))
    body = await submitted(world, "FGW-CAL-2")
    request_id = body["request_id"]
    assert (body["due_date"], body["deadline_provisional"], body["deadline_source"]) == (
        "2026-12-24",
        False,
        "chinese-calendar",
    )
    world.set_clock(datetime(2026, 12, 21, 10, 0, tzinfo=CHINA))
    extended = await world.post(
        "credit-officer", f"{REQUESTS}/{request_id}/extend", {"working_days": 10, "reason": "需征求主管部门意见"}
    )
    assert extended.status_code == 200, extended.text
    # 24 Dec + 10: Dec 25, 28–31, then (元旦 off) Jan 4–8.
    assert (extended.json()["due_date"], extended.json()["deadline_provisional"]) == ("2027-01-08", True)

    # A second request, left to pass its provisional deadline: escalated by the same rule as any other.
    world.set_clock(CHRISTMAS_EVE)
    late = await submitted(world, "FGW-CAL-3")
    assert late["due_date"] == "2027-01-08"
    world.set_clock(datetime(2027, 1, 9, 0, 30, tzinfo=CHINA))
    swept = await world.sweep()
    assert {out.request_id for out in swept} == {request_id, late["request_id"]}
    escalated = (await world.get("admin", f"{REQUESTS}/{late['request_id']}")).json()
    assert escalated["escalated_at"] is not None and escalated["overdue"]
    assert escalated["history"][-1]["note"]["deadline_provisional"] is True

    # An escalated request keeps the deadline that escalated it: an import no longer counts it again.
    imported = await import_fixture(world)
    assert imported.status_code == 201, imported.text
    assert imported.json()["recomputed"] == 0


async def test_an_extension_made_provisional_is_recomputed_by_the_import(world: World) -> None:
    world.set_clock(datetime(2026, 12, 10, 10, 0, tzinfo=CHINA))
    request_id = (await submitted(world, "FGW-CAL-4"))["request_id"]
    world.set_clock(datetime(2026, 12, 21, 10, 0, tzinfo=CHINA))
    extended = await world.post(
        "credit-officer", f"{REQUESTS}/{request_id}/extend", {"working_days": 10, "reason": "需征求主管部门意见"}
    )
    assert extended.json()["due_date"] == "2027-01-08"
    imported = await import_fixture(world)
    assert imported.json()["deadlines"] == [
        {
            "request_id": request_id,
            "due_date_before": "2027-01-08",
            "due_date": "2027-01-09",
            "deadline_provisional": False,
        }
    ]
    after = (await world.get("admin", f"{REQUESTS}/{request_id}")).json()
    assert (after["due_date"], after["extended_days"], after["deadline_source"]) == ("2027-01-09", 10, "imported")


async def test_an_import_by_another_node_is_seen_and_the_sweep_recomputes_what_it_raced(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = (await submitted(world, "FGW-CAL-7"))["request_id"]
    # Another node's import, as that node writes it: the table changes, this node's cache is not told.
    async with world.gw.runtime.sessions() as session:
        await store_schedule(session, read_schedule(FIXTURE.read_text(), csv_format=False), "ops-li", real_now())
    monkeypatch.setattr(calendar, "CHECK_SECONDS", 0.0)  # this node's next lookup checks the table's revisions
    async with httpx.AsyncClient(base_url=world.url) as anonymous:
        deadline = await anonymous.get("/v1/calendar/deadline", params={"start": "2026-12-24", "working_days": 10})
    assert (deadline.json()["due"], deadline.json()["source"]) == ("2027-01-09", "imported")
    before = (await world.get("admin", f"{REQUESTS}/{request_id}")).json()
    assert (before["due_date"], before["deadline_provisional"]) == ("2027-01-08", True)
    await world.sweep()
    after = (await world.get("admin", f"{REQUESTS}/{request_id}")).json()
    assert (after["due_date"], after["deadline_provisional"]) == ("2027-01-09", False)
    assert after["history"][-1]["note"]["rule"] == "the calendar changed since this deadline was counted"
    assert len(await world.audit_records("sharing.recompute_deadline")) == 1
    await world.sweep()
    assert len(await world.audit_records("sharing.recompute_deadline")) == 1, "nothing left to recompute"


async def test_an_invalid_import_changes_nothing_and_names_the_line(world: World) -> None:
    body = await submitted(world, "FGW-CAL-5")
    text = FIXTURE.read_text().replace("{date: 2027-02-13, festival: 春节}", "{date: 2027-01-06, festival: 元旦}")
    line = next(number for number, content in enumerate(text.splitlines(), 1) if "2027-01-06" in content)
    refused = assert_problem(await import_fixture(world, text), 422, "workday_not_weekend")
    assert refused["errors"][0]["field"] == f"line {line}"
    assert "Wednesday" in refused["errors"][0]["message"]
    async with world.client("data-officer") as client:
        forbidden = await client.post(
            "/v1/calendar/schedules", content=FIXTURE.read_bytes(), headers={"content-type": "application/yaml"}
        )
    assert_problem(forbidden, 403, "role_forbidden")
    years = {entry["year"]: entry["source"] for entry in (await world.get("admin", "/v1/calendar/years")).json()}
    assert years[2027] == "provisional"
    after = (await world.get("admin", f"{REQUESTS}/{body['request_id']}")).json()
    assert (after["due_date"], after["deadline_provisional"]) == ("2027-01-08", True)
    records = await world.audit_records("admin.calendar.import")
    assert [(record["caller_id"], record["decision"], record["reason_code"]) for record in records] == [
        ("admin", "refused", "workday_not_weekend"),
        ("data-officer", "refused", "role_forbidden"),
    ]


async def test_the_start_warning_is_logged_from_november_while_next_year_is_missing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    service = world.gw.app.state.sharing
    world.set_clock(datetime(2026, 10, 31, 12, 0, tzinfo=CHINA))
    assert await service.warn_about_calendar() is None
    world.set_clock(datetime(2026, 11, 1, 12, 0, tzinfo=CHINA))
    with caplog.at_level(logging.WARNING, logger="msjx.sharing"):
        assert await service.warn_about_calendar() == "next year not loaded"
    [warning] = [entry for entry in caplog.records if entry.name == "msjx.sharing"]
    assert "2027" in warning.getMessage() and "calendar import" in warning.getMessage()
    assert (await import_fixture(world)).status_code == 201
    assert await service.warn_about_calendar() is None
    world.set_clock(datetime(2028, 1, 2, 12, 0, tzinfo=CHINA))
    assert await service.warn_about_calendar() == "this year not loaded"


# --- the command ---------------------------------------------------------------------------------------------


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MSJX_DATA_DIR": str(data_dir)}
    env.pop("MSJX_DATABASE_URL", None)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
async def test_calendar_import_command(tmp_path: Path, credit_url: str) -> None:
    async with sharing_world("sqlite", tmp_path, credit_url) as world:
        world.set_clock(CHRISTMAS_EVE)
        request_id = (await submitted(world, "FGW-CAL-6"))["request_id"]

        bad = tmp_path / "bad.csv"
        bad.write_text("date,kind,festival\n2027-01-01,holiday,元旦\n2027-01-06,workday,元旦\n2027-01-07,holiday,\n")
        refused = cli("calendar", "import", str(bad), "--year", "2027", "--source", "test", data_dir=tmp_path)
        assert refused.returncode == 1, refused.stderr
        assert f"{bad}:3: 2027-01-06 is a Wednesday" in refused.stderr
        assert f"{bad}:4: 2027-01-07 is a holiday without a named festival" in refused.stderr
        assert "nothing was imported" in refused.stderr

        done = cli("calendar", "import", str(FIXTURE), "--by", "ops-zhang", data_dir=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "1 deadline(s) moved (1 open deadline(s) counted again)" in done.stdout
        assert f"{request_id}  2027-01-08 → 2027-01-09" in done.stdout

        after = (await world.get("admin", f"{REQUESTS}/{request_id}")).json()
        assert (after["due_date"], after["deadline_source"]) == ("2027-01-09", "imported")
        assert after["history"][-1]["note"]["rule"] == "calendar 2027 imported by ops-zhang"

        years = cli("calendar", "years", data_dir=tmp_path)
        assert re.search(r"^2027  imported .*TEST FIXTURE.* by ops-zhang\)$", years.stdout, re.MULTILINE), years.stdout
        shown = cli("calendar", "show", "2027", data_dir=tmp_path)
        assert "2027-01-09  周六  元旦" in shown.stdout
        verified = cli("audit", "verify", data_dir=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "cli-node-1" in verified.stdout
