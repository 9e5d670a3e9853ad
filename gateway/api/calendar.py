"""Admin API of the working-day calendar: import a year's holiday schedule, list the years, show one year.

An import is one audited exchange (its sealed request holds the file); each open provisional deadline it
moves is a transition of its sharing request with its own audit record, as the `system` actor.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.api.deps import AuditDep, EngineDep, SessionsDep, SharingDep
from gateway.api.docs import SIGNED, problem_responses
from gateway.http.problems import Problem
from gateway.pipeline.exchange import Exchange, run_exchange
from gateway.sharing.calendar import calendar_for, years_overview
from gateway.sharing.calendar_import import import_schedule, schedule_out
from gateway.sharing.errors import calendar_problem
from gateway.sharing.schedule_file import ScheduleInvalid, is_csv, read_schedule
from gateway.sharing.service import transition_event
from gateway.sharing.workdays import FIRST_YEAR, LAST_YEAR, CalendarYearUnsupported
from gateway.sharing.workflow import Outcome
from schemas.calendar import CalendarImportOut, CalendarYearOut, ScheduleOut
from schemas.problems import ProblemCode
from schemas.sharing import SharingRequestOut
from schemas.times import china_date

router = APIRouter(prefix="/v1/calendar", tags=["calendar"])
ADMIN = {"admin"}
SAMPLE = """year: 2027
source: 国务院办公厅关于2027年部分节假日安排的通知
holidays:
  - {date: 2027-01-01, festival: 元旦}
workdays: []
"""


def _dump(value: BaseModel | list[BaseModel]) -> bytes:
    if isinstance(value, list):
        return orjson.dumps([item.model_dump(mode="json") for item in value])
    return orjson.dumps(value.model_dump(mode="json"))


def schedule_problem(exc: ScheduleInvalid) -> Problem:
    """Every fault of the file at once, each with its line (the field is `line N`)."""
    errors = [
        {"field": f"line {fault.line}" if fault.line is not None else "", "message": fault.message, "type": fault.code}
        for fault in exc.faults
    ]
    first = exc.faults[0]
    return Problem(first.code, str(first), status=422, title="Holiday schedule is invalid", errors=errors)


@router.post(
    "/schedules",
    status_code=201,
    summary="Import a year's holiday schedule",
    description=(
        "Admin only. The body is the schedule file: YAML or JSON (`year`, `source`, `holidays`, `workdays`, each"
        " day `{date, festival}`, optionally `until` for a run of days), or CSV (`Content-Type: text/csv`, header"
        " `date,kind,festival`, with `year` and `source` as query parameters). Every fault is reported at once"
        " with its line, and nothing is written then. The year replaces the library's (or an earlier import);"
        " every open provisional deadline is counted again, each change recorded in its request's history and"
        " audited. " + SIGNED
    ),
    response_model=CalendarImportOut,
    responses=problem_responses(401, 403, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/yaml": {"schema": {"type": "string"}, "example": SAMPLE},
                "application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
async def import_calendar(
    request: Request,
    sessions: SessionsDep,
    audit_writer: AuditDep,
    sharing: SharingDep,
    year: Annotated[int | None, Query(description="the year of a CSV body")] = None,
    source: Annotated[str | None, Query(max_length=500, description="the notice a CSV body comes from")] = None,
) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        try:
            text = exchange.body.decode("utf-8")
        except UnicodeDecodeError:
            raise Problem(ProblemCode.FILE_INVALID, "the body is not UTF-8 text") from None
        try:
            schedule = read_schedule(
                text, csv_format=is_csv("", request.headers.get("content-type")), year=year, source=source
            )
        except ScheduleInvalid as exc:
            raise schedule_problem(exc) from None
        caller = exchange.principal.caller

        async def audit(out: SharingRequestOut, outcome: Outcome) -> None:
            event = transition_event(out, outcome, caller_id="system", department=None, roles=("system",))
            await audit_writer.append(event)

        result = await import_schedule(sessions, schedule, caller.caller_id, sharing.now(), audit)
        return 201, _dump(result)

    return await run_exchange(request, "admin.calendar.import", handler, roles=ADMIN)


@router.get(
    "/years",
    summary="Calendar years and their sources",
    description=(
        "Admin only. Each year the library knows or an operator imported, and this year and next: `imported`,"
        " `chinese-calendar`, or `provisional` (weekends and the statutory holidays of the `holidays` package). "
        + SIGNED
    ),
    response_model=list[CalendarYearOut],
    responses=problem_responses(401, 403),
)
async def list_years(request: Request, engine: EngineDep, sharing: SharingDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        calendar = await calendar_for(engine)
        today = china_date(sharing.now())
        rows = [
            CalendarYearOut(
                year=entry.year,
                source=entry.source,  # type: ignore[arg-type]
                notice=entry.schedule.source,
                imported_at=entry.schedule.imported_at,
                imported_by=entry.schedule.imported_by,
                holidays=len(entry.schedule.holidays),
                workdays=len(entry.schedule.workdays),
            )
            for entry in years_overview(calendar, today)
        ]
        return 200, _dump(rows)

    return await run_exchange(request, "admin.calendar.list", handler, roles=ADMIN)


@router.get(
    "/years/{year}",
    summary="One year's holidays and 调休 workdays",
    description=f"Admin only. Any year {FIRST_YEAR}–{LAST_YEAR}, from its source. " + SIGNED,
    response_model=ScheduleOut,
    responses=problem_responses(401, 403, 422),
)
async def show_year(request: Request, year: int, engine: EngineDep) -> Response:
    async def handler(exchange: Exchange) -> tuple[int, bytes]:
        calendar = await calendar_for(engine)
        try:
            out = schedule_out(calendar, year)
        except CalendarYearUnsupported:
            raise calendar_problem(CalendarYearUnsupported(date(max(1, min(year, 9999)), 1, 1)), "year") from None
        return 200, _dump(out)

    return await run_exchange(request, "admin.calendar.show", handler, roles=ADMIN)
