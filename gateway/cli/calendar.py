"""`msjx-gateway calendar`: import a year's holiday schedule (audited), list the years and their sources, show one.

The import writes its audit records on the chain `cli-<node id>`, never on a running node's own chain (two
writers on one chain would fork it); `audit verify` checks that chain like any other.
"""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import DataDir, cli_settings, fail
from gateway.clock import SYSTEM_CLOCK

calendar_app = typer.Typer(
    help="The working-day calendar: load the State Council's holiday schedule each year.", no_args_is_help=True
)
WEEKDAYS = "一二三四五六日"


@calendar_app.command("import")
def calendar_import(
    file: Annotated[Path, typer.Argument(help="the schedule: YAML (or JSON), or CSV (by its .csv name)")],
    year: Annotated[int | None, typer.Option(help="the year, for a CSV file (a YAML file states it)")] = None,
    source: Annotated[
        str | None, typer.Option(help="the notice the days come from, for a CSV file (a YAML file states it)")
    ] = None,
    by: Annotated[str | None, typer.Option(help="who imports, for the record (default: cli:<login name>)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Check the whole file, then store the year (replacing the library's or an earlier import) and count every
    open provisional deadline, and every open deadline counted over that year, again. A file with faults
    changes nothing: each fault is printed with its line."""
    from gateway.sharing.schedule_file import ScheduleInvalid, is_csv, read_schedule

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{file}: {exc}") from None
    try:
        schedule = read_schedule(text, csv_format=is_csv(file.name), year=year, source=source)
    except ScheduleInvalid as exc:
        for fault in exc.faults:
            where = f"{file}:{fault.line}" if fault.line is not None else str(file)
            typer.echo(f"{where}: {fault.message} [{fault.code}]", err=True)
        raise fail(f"{len(exc.faults)} fault(s); nothing was imported", 1) from None
    settings = cli_settings(data_dir)
    imported_by = by or f"cli:{getpass.getuser()}"
    result = _import(settings, schedule, text.encode(), imported_by)
    out = result.schedule
    typer.echo(
        f"{out.year} imported from {out.notice}: {out.holidays} holidays, {out.workdays} 调休 workdays"
        f" (by {imported_by})"
    )
    typer.echo(f"{result.moved} deadline(s) moved ({result.recomputed} open deadline(s) counted again)")
    for change in result.deadlines:
        still = "  (still provisional)" if change.deadline_provisional else ""
        typer.echo(f"  {change.request_id}  {change.due_date_before} → {change.due_date}{still}")


def _import(settings: Any, schedule: Any, file_bytes: bytes, imported_by: str) -> Any:
    import orjson

    from gateway.audit.writer import AuditEvent, AuditUnavailable, new_request_id
    from gateway.cli.audited import cli_audit_writer
    from gateway.sharing.calendar_import import import_schedule
    from gateway.sharing.service import transition_event
    from gateway.storage import db

    db.upgrade(settings)

    async def main() -> Any:
        engine = db.create_engine(settings)
        try:
            # The writer starts before anything is written: no import without its audit record.
            async with cli_audit_writer(settings, engine) as writer:

                async def audit(out: Any, outcome: Any) -> None:
                    await writer.append(
                        transition_event(out, outcome, caller_id="system", department=None, roles=("system",))
                    )

                result = await import_schedule(
                    db.sessionmaker(engine), schedule, imported_by, SYSTEM_CLOCK.now(), audit
                )
                await writer.append(
                    AuditEvent(
                        event="admin.calendar.import",
                        request_id=new_request_id(),
                        decision="allowed",
                        status_code=201,
                        request_body=file_bytes,
                        response_body=orjson.dumps(result.model_dump(mode="json")),
                        caller_id=imported_by,
                        roles=("operator",),
                        path="msjx-gateway calendar import",
                    )
                )
                return result
        except AuditUnavailable:
            raise fail("the schedule is stored, but its audit record could not be written; see the log", 1) from None
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _calendar(settings: Any) -> Any:
    from gateway.sharing.calendar import calendar_for
    from gateway.storage import db

    db.upgrade(settings)

    async def main() -> Any:
        engine = db.create_engine(settings)
        try:
            return await calendar_for(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


@calendar_app.command("years")
def calendar_years(data_dir: DataDir = None) -> None:
    """Each year with its source: imported, chinese-calendar, or provisional (with this year and next)."""
    from gateway.sharing.calendar import years_overview
    from gateway.sharing.workdays import PROVISIONAL_RULE
    from schemas.times import china_date

    calendar = _calendar(cli_settings(data_dir))
    for entry in years_overview(calendar, china_date(SYSTEM_CLOCK.now())):
        schedule = entry.schedule
        if entry.source == "imported":
            detail = f"{schedule.source} (imported {schedule.imported_at:%Y-%m-%d %H:%M} UTC by {schedule.imported_by})"
        elif entry.source == "provisional":
            detail = f"{PROVISIONAL_RULE}: deadlines counted here are provisional"
        else:
            detail = schedule.source
        typer.echo(f"{entry.year}  {entry.source:<16}  {detail}")


@calendar_app.command("show")
def calendar_show(year: Annotated[int, typer.Argument()], data_dir: DataDir = None) -> None:
    """Print a year's holidays and 调休 workdays, from whichever source counts that year."""
    from gateway.sharing.workdays import FIRST_YEAR, LAST_YEAR

    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise fail(f"{year} is outside {FIRST_YEAR}–{LAST_YEAR}, the years any calendar source covers")
    calendar = _calendar(cli_settings(data_dir))
    schedule = calendar.schedule(year)
    typer.echo(f"{year}: {calendar.source_of(year)} — {schedule.source}")
    if schedule.imported_at is not None:
        typer.echo(f"imported {schedule.imported_at:%Y-%m-%d %H:%M} UTC by {schedule.imported_by}")
    for title, days in (("holidays (放假)", schedule.holidays), ("workdays (调休上班)", schedule.workdays)):
        typer.echo(f"{title}: {len(days)}")
        for day, festival in sorted(days.items()):
            typer.echo(f"  {day}  周{WEEKDAYS[day.weekday()]}  {festival}")
