"""A year's holiday schedule file (YAML, or CSV), read and checked in full before anything is written.

YAML (JSON is YAML too)::

    year: 2027
    source: 国务院办公厅关于2027年部分节假日安排的通知
    holidays:
      - {date: 2027-01-01, festival: 元旦}
      - {date: 2027-02-05, until: 2027-02-13, festival: 春节}   # `until`: a run of days, inclusive
    workdays:
      - {date: 2027-02-14, festival: 春节}

CSV has a header `date,kind,festival` (an optional `until` column), `kind` being `holiday` (放假) or `workday`
(调休上班); its year and source are given beside it (`--year`, `--source`). Every fault is reported at once,
each with the line it is on.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import yaml

from gateway.sharing.workdays import FIRST_YEAR, LAST_YEAR
from schemas.errors import MsjxError
from schemas.problems import ProblemCode

KINDS = ("holiday", "workday")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MAX_SOURCE = 500
MAX_FESTIVAL = 64
MAX_RUN_DAYS = 31


@dataclass(frozen=True)
class Fault:
    line: int | None
    code: ProblemCode
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


class ScheduleInvalid(MsjxError):
    """The file has faults; nothing was written. `faults` lists every one, by line."""

    def __init__(self, faults: list[Fault]) -> None:
        self.faults = faults
        super().__init__("; ".join(str(fault) for fault in faults))


@dataclass(frozen=True)
class Entry:
    line: int
    kind: str
    day: date
    festival: str


@dataclass
class ScheduleIn:
    """A checked schedule: the year, its source, and each day off or 调休 workday with its festival."""

    year: int
    source: str
    holidays: dict[date, str] = field(default_factory=dict)
    workdays: dict[date, str] = field(default_factory=dict)


@dataclass
class _Draft:
    year: int | None = None
    year_line: int | None = None
    source: str | None = None
    entries: list[Entry] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def fault(self, line: int | None, code: ProblemCode, message: str) -> None:
        self.faults.append(Fault(line, code, message))


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        return None


def _add_days(draft: _Draft, line: int, kind: str, first: str, until: str | None, festival: str) -> None:
    """One row: a day, or a run of days with `until`; a bad date is a fault and adds nothing."""
    start = _date(first)
    if start is None:
        draft.fault(line, ProblemCode.DATE_INVALID, f"{first!r} is not a date (YYYY-MM-DD)")
        return
    end = start
    if until:
        end = _date(until)  # type: ignore[assignment]
        if end is None:
            draft.fault(line, ProblemCode.DATE_INVALID, f"until {until!r} is not a date (YYYY-MM-DD)")
            return
        if not start <= end <= start + timedelta(days=MAX_RUN_DAYS):
            draft.fault(
                line, ProblemCode.RUN_INVALID, f"until {end} must be on or after {start}, within {MAX_RUN_DAYS} days"
            )
            return
    festival = festival.strip()
    if not festival:
        what = "a holiday" if kind == "holiday" else "a 调休 workday"
        draft.fault(line, ProblemCode.FESTIVAL_MISSING, f"{start} is {what} without a named festival")
        return
    if len(festival) > MAX_FESTIVAL:
        draft.fault(line, ProblemCode.FESTIVAL_TOO_LONG, f"a festival name has at most {MAX_FESTIVAL} characters")
        return
    day = start
    while day <= end:
        draft.entries.append(Entry(line, kind, day, festival))
        day += timedelta(days=1)


def _check(draft: _Draft) -> ScheduleIn:
    """The rules of a schedule: dates in its year, no day twice, 调休 workdays on weekends, festivals named."""
    if draft.year is None:
        if not any(fault.code is ProblemCode.YEAR_INVALID for fault in draft.faults):
            draft.fault(None, ProblemCode.YEAR_MISSING, "the schedule states no year")
    elif not FIRST_YEAR <= draft.year <= LAST_YEAR:
        draft.fault(draft.year_line, ProblemCode.YEAR_INVALID, f"year {draft.year} is outside {FIRST_YEAR}–{LAST_YEAR}")
    if not draft.source or not draft.source.strip():
        draft.fault(None, ProblemCode.SOURCE_MISSING, "the schedule names no source (the notice it comes from)")
    elif len(draft.source) > MAX_SOURCE:
        draft.fault(None, ProblemCode.SOURCE_TOO_LONG, f"the source has at most {MAX_SOURCE} characters")
    seen: dict[date, Entry] = {}
    for entry in draft.entries:
        if draft.year is not None and entry.day.year != draft.year:
            draft.fault(entry.line, ProblemCode.DATE_OUTSIDE_YEAR, f"{entry.day} is not in {draft.year}")
            continue
        earlier = seen.get(entry.day)
        if earlier is not None:
            if earlier.kind == entry.kind:
                draft.fault(
                    entry.line, ProblemCode.DATE_REPEATED, f"{entry.day} is listed already, on line {earlier.line}"
                )
            else:
                draft.fault(
                    entry.line,
                    ProblemCode.HOLIDAY_AND_WORKDAY,
                    f"{entry.day} is both a holiday and a workday (line {earlier.line} has it as a {earlier.kind})",
                )
            continue
        seen[entry.day] = entry
        if entry.kind == "workday" and entry.day.weekday() < 5:
            draft.fault(
                entry.line,
                ProblemCode.WORKDAY_NOT_WEEKEND,
                f"{entry.day} is a {WEEKDAYS[entry.day.weekday()]}; a 调休 workday is always a Saturday or Sunday",
            )
    if not any(entry.kind == "holiday" for entry in draft.entries) and not draft.faults:
        draft.fault(None, ProblemCode.HOLIDAYS_MISSING, "the schedule lists no holiday")
    if draft.faults:
        raise ScheduleInvalid(sorted(draft.faults, key=lambda fault: fault.line or 0))
    assert draft.year is not None and draft.source is not None
    schedule = ScheduleIn(draft.year, draft.source.strip())
    for entry in draft.entries:
        (schedule.holidays if entry.kind == "holiday" else schedule.workdays)[entry.day] = entry.festival
    return schedule


# --- YAML ----------------------------------------------------------------------------------------------------


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(draft: _Draft, node: yaml.Node, what: str) -> str | None:
    if not isinstance(node, yaml.ScalarNode):
        draft.fault(_line(node), ProblemCode.VALUE_INVALID, f"{what} must be a single value")
        return None
    return str(node.value)


def _yaml_days(draft: _Draft, kind: str, node: yaml.Node) -> None:
    if not isinstance(node, yaml.SequenceNode):
        draft.fault(_line(node), ProblemCode.VALUE_INVALID, f"{kind}s must be a list of {{date, festival}}")
        return
    for item in node.value:
        line = _line(item)
        if not isinstance(item, yaml.MappingNode):
            draft.fault(line, ProblemCode.VALUE_INVALID, "each entry is {date: YYYY-MM-DD, festival: NAME}")
            continue
        values: dict[str, str] = {}
        for key_node, value_node in item.value:
            key = str(key_node.value)
            if key not in ("date", "until", "festival"):
                draft.fault(_line(key_node), ProblemCode.KEY_UNKNOWN, f"unknown key {key!r} (date, until, festival)")
                continue
            value = _scalar(draft, value_node, key)
            if value is not None:
                values[key] = value
        if "date" not in values:
            draft.fault(line, ProblemCode.DATE_MISSING, "the entry has no date")
            continue
        _add_days(draft, line, kind, values["date"], values.get("until"), values.get("festival") or "")


def _read_yaml(text: str) -> _Draft:
    draft = _Draft()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        draft.fault(
            mark.line + 1 if mark else None, ProblemCode.FILE_INVALID, f"not YAML: {getattr(exc, 'problem', exc)}"
        )
        return draft
    except RecursionError:  # PyYAML composes recursively: a file nested a thousand levels deep is refused, not a 500
        draft.fault(None, ProblemCode.FILE_INVALID, "not a schedule: nested far too deeply")
        return draft
    if not isinstance(root, yaml.MappingNode):
        draft.fault(
            _line(root) if root else None, ProblemCode.FILE_INVALID, "the file is a mapping: year, source, holidays"
        )
        return draft
    for key_node, value_node in root.value:
        key = str(key_node.value)
        if key == "year":
            value = _scalar(draft, value_node, "year")
            draft.year_line = _line(value_node)
            if value is not None:
                try:
                    draft.year = int(value)
                except ValueError:
                    draft.fault(draft.year_line, ProblemCode.YEAR_INVALID, f"year {value!r} is not a number")
        elif key == "source":
            draft.source = _scalar(draft, value_node, "source") or " "
        elif key in ("holidays", "workdays"):
            _yaml_days(draft, key[:-1], value_node)
        else:
            draft.fault(
                _line(key_node), ProblemCode.KEY_UNKNOWN, f"unknown key {key!r} (year, source, holidays, workdays)"
            )
    return draft


# --- CSV -----------------------------------------------------------------------------------------------------


def _read_csv(text: str) -> _Draft:
    draft = _Draft()
    # newline="" as the csv module asks: a line break inside a quoted field is data.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        _read_csv_rows(draft, reader)
    except csv.Error as exc:  # a field over the csv module's limit (128 KiB)
        draft.fault(reader.line_num or None, ProblemCode.FILE_INVALID, f"not readable as CSV: {exc}")
    return draft


def _read_csv_rows(draft: _Draft, reader: Any) -> None:
    header: list[str] | None = None
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [name.strip().lower() for name in row]
            missing = [name for name in ("date", "kind", "festival") if name not in header]
            if missing:
                draft.fault(
                    line,
                    ProblemCode.HEADER_INVALID,
                    f"the header needs columns date, kind, festival; missing {missing}",
                )
                return
            continue
        cells = dict(zip(header, (cell.strip() for cell in row), strict=False))
        kind = cells.get("kind", "")
        if kind not in KINDS:
            draft.fault(line, ProblemCode.KIND_INVALID, f"kind {kind!r} is neither holiday nor workday")
            continue
        _add_days(draft, line, kind, cells.get("date", ""), cells.get("until") or None, cells.get("festival", ""))
    if header is None:
        draft.fault(None, ProblemCode.FILE_INVALID, "the CSV file is empty")


def read_schedule(text: str, *, csv_format: bool, year: int | None = None, source: str | None = None) -> ScheduleIn:
    """Parse and check a schedule file; `year` and `source` fill what the file does not state (a CSV states none).

    Raises `ScheduleInvalid` with every fault, each with its line.
    """
    if "\x00" in text:  # PostgreSQL's text cannot hold a NUL, and no notice has one
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ScheduleInvalid([Fault(line, ProblemCode.NUL_CHARACTER, "the file holds a NUL character (U+0000)")])
    draft = _read_csv(text) if csv_format else _read_yaml(text)
    if year is not None:
        if draft.year is not None and draft.year != year:
            draft.fault(draft.year_line, ProblemCode.YEAR_MISMATCH, f"the file states {draft.year}, not {year}")
        draft.year = year
    if source is not None and source.strip():
        if draft.source is not None and draft.source.strip() and draft.source.strip() != source.strip():
            draft.fault(None, ProblemCode.SOURCE_MISMATCH, "the file states another source than the one given")
        draft.source = source
    return _check(draft)


def is_csv(name: str, content_type: str | None = None) -> bool:
    """A file (by its name) or a body (by its content type) in CSV; anything else is read as YAML or JSON."""
    if content_type is not None:
        return content_type.split(";")[0].strip().lower() in ("text/csv", "application/csv")
    return name.lower().endswith(".csv")
