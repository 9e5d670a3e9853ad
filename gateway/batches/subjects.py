"""A batch's subjects (inline JSON, or an NDJSON or CSV upload) checked in full before any upstream is called.

Every bad line is reported at once with its line number (一次性告知), like the 名单类 CSV check: a wrong check
character, a duplicate, a missing column, a parameter an operation refuses. One 422 names them all.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from gateway.http.problems import Problem
from schemas.problems import ProblemCode
from schemas.uscc import uscc_error

MAX_INLINE = 1_000
MAX_LINES = 1_000_000
# A 422 listing a million errors helps nobody: the first ones, and how many more.
MAX_REPORTED = 1_000
# Lines of an upload checked between two turns of the event loop (parse_upload).
UPLOAD_SLICE = 100
# Every UPLOAD_PAUSE_EVERY slices the check sleeps UPLOAD_PAUSE seconds rather than just yielding (parse_upload).
UPLOAD_PAUSE_EVERY = 4
UPLOAD_PAUSE = 0.001

Subject = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class LineError:
    line: int
    field: str
    message: str
    type: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message, "type": self.type}


@dataclass(frozen=True)
class Target:
    """One operation of the batch as the check needs it: its input model, and the parameters given for all."""

    label: str
    input_model: type[BaseModel]
    params: dict[str, Any]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.input_model.model_fields)


def _rows_ndjson(body: bytes, errors: list[LineError]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    for number, raw in enumerate(body.split(b"\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            errors.append(LineError(number, "line", f"not JSON: {exc.msg}", "line_not_json"))
            yield number, None
            continue
        if not isinstance(value, dict):
            errors.append(LineError(number, "line", "a line is one JSON object", "line_not_object"))
            yield number, None
            continue
        yield number, value


def _decode(body: bytes) -> str:
    # Departments export from Excel: UTF-8 with or without BOM, or GBK.
    for encoding in ("utf-8-sig", "gbk"):
        try:
            return body.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise Problem(
        ProblemCode.SUBJECTS_ENCODING,
        "the file is neither UTF-8 nor GBK",
        errors=[LineError(1, "file", "neither UTF-8 nor GBK", ProblemCode.SUBJECTS_ENCODING).as_dict()],
    )


def _rows_csv(body: bytes, errors: list[LineError]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    reader = csv.reader(io.StringIO(_decode(body)))
    header = next(reader, None)
    if header is None or "uscc" not in [name.strip() for name in header]:
        errors.append(
            LineError(1, "header", "the first line names the columns, one of them uscc", ProblemCode.HEADER_INVALID)
        )
        return
    names = [name.strip() for name in header]
    for row in reader:
        number = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            errors.append(LineError(number, "line", f"{len(row)} columns, expected {len(names)}", "column_count"))
            yield number, None
            continue
        # An empty cell is an absent optional parameter, not an empty string.
        yield number, {name: cell.strip() for name, cell in zip(names, row, strict=True) if cell.strip()}


def _rows_inline(subjects: Sequence[Any], errors: list[LineError]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    for number, value in enumerate(subjects, start=1):
        if not isinstance(value, dict):
            errors.append(LineError(number, "line", "a subject is an object with a uscc", "line_not_object"))
            yield number, None
            continue
        yield number, value


class SubjectCheck:
    """Rows checked one slice at a time against every operation: the subjects in order, or errors (filled in
    `errors`). An upload is fed in slices so that the event loop serves other requests in between."""

    def __init__(self, targets: Sequence[Target], errors: list[LineError]) -> None:
        self.targets = [(target, target.names) for target in targets]  # names built once, not once a row
        self.accepted: frozenset[str] = frozenset().union(*(names for _, names in self.targets))
        self.errors = errors
        self.subjects: list[Subject] = []
        self.count = 0
        self.full = False  # MAX_LINES reached: the rest is not read
        self._seen: dict[tuple[str, str], int] = {}

    def feed(self, rows: Iterable[tuple[int, dict[str, Any] | None]]) -> int:
        """Check `rows`; how many were taken (fewer than given once the file is over MAX_LINES)."""
        taken = 0
        for number, row in rows:
            taken += 1
            self.count += 1
            if self.count > MAX_LINES:
                self.errors.append(
                    LineError(
                        number, "file", f"a batch has at most {MAX_LINES} subjects", ProblemCode.TOO_MANY_SUBJECTS
                    )
                )
                self.full = True
                break
            if row is not None:
                self._check(number, row)
        return taken

    def _check(self, number: int, row: dict[str, Any]) -> None:
        errors = self.errors
        uscc = row.get("uscc")
        if uscc is None:
            errors.append(LineError(number, "uscc", "the uscc is missing", "missing"))
            return
        problem = uscc_error(uscc)
        if problem is not None:
            errors.append(LineError(number, "uscc", problem, "uscc_invalid"))
            return
        params = {name: value for name, value in row.items() if name != "uscc"}
        held = next((name for name, value in params.items() if isinstance(value, str) and "\x00" in value), None)
        if held is not None:  # PostgreSQL's text cannot hold a NUL, nor can a SOAP upstream's XML
            errors.append(LineError(number, held, "holds a NUL character (U+0000)", ProblemCode.NUL_CHARACTER))
            return
        unknown = sorted(set(params) - self.accepted)
        if unknown:
            errors.append(
                LineError(number, unknown[0], f"no operation of the batch takes {unknown}", "parameter_unknown")
            )
            return
        # A str, not orjson's bytes: each bytes object orjson returns keeps its ~4 KB buffer while it lives, which
        # made a 100,000-line upload hold 400 MB here (docs/batches.md, "Memory").
        key = (uscc, orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode() if params else "")
        first = self._seen.get(key)
        if first is not None:
            errors.append(LineError(number, "uscc", f"{uscc} is listed already on line {first}", "duplicate"))
            return
        self._seen[key] = number
        for target, names in self.targets:
            values = {**target.params, **{k: v for k, v in params.items() if k in names}, "uscc": uscc}
            try:
                target.input_model.model_validate(values)
            except ValidationError as exc:
                first_error = exc.errors()[0]
                field = "/".join(str(part) for part in first_error.get("loc", ())) or "line"
                message = str(first_error.get("msg", "invalid")).removeprefix("Value error, ")
                errors.append(LineError(number, field, f"{target.label}: {message}", str(first_error.get("type"))))
                return
        self.subjects.append((uscc, params))


def _rows(
    inline: Sequence[Any] | None, body: bytes | None, media_type: str, errors: list[LineError]
) -> Iterable[tuple[int, dict[str, Any] | None]]:
    if inline is not None:
        if len(inline) > MAX_INLINE:
            raise Problem(
                ProblemCode.TOO_MANY_SUBJECTS,
                f"at most {MAX_INLINE} subjects inline; upload a CSV or NDJSON file for more",
                errors=[
                    {"field": "subjects", "message": f"{len(inline)} subjects", "type": ProblemCode.TOO_MANY_SUBJECTS}
                ],
            )
        return _rows_inline(inline, errors)
    if media_type == "text/csv":
        return _rows_csv(body or b"", errors)
    return _rows_ndjson(body or b"", errors)


def _verdict(check: SubjectCheck) -> list[Subject]:
    errors = check.errors
    if not errors and not check.subjects:
        errors.append(LineError(1, "subjects", "the batch names no subject", "subjects_empty"))
    if errors:
        shown = [error.as_dict() for error in errors[:MAX_REPORTED]]
        more = len(errors) - len(shown)
        first = errors[0]
        detail = f"{len(errors)} line(s) are invalid; nothing was run. First: line {first.line}, {first.field}: " + (
            first.message
        )
        if more:
            detail += f" ({more} more not listed)"
        raise Problem(ProblemCode.SUBJECTS_INVALID, detail, errors=shown)
    return check.subjects


def parse_subjects(
    *, inline: Sequence[Any] | None, body: bytes | None, media_type: str, targets: Sequence[Target]
) -> list[Subject]:
    """The subjects of a submission, or a 422 `subjects_invalid` naming every bad line."""
    errors: list[LineError] = []
    check = SubjectCheck(targets, errors)
    check.feed(_rows(inline, body, media_type, errors))
    return _verdict(check)


async def parse_upload(body: bytes, media_type: str, targets: Sequence[Target]) -> list[Subject]:
    """`parse_subjects` for an uploaded file, on the event loop a slice of lines at a time.

    Not in a thread: a thread checking 100,000 lines held the GIL for 5 ms at a time (Python's switch interval)
    while the loop waited, so interactive calls in a batch's first seconds met a 5 ms stall at every step, and they
    made the batch's p99 (35 ms, 28 without them; docs/batches.md). A slice of UPLOAD_SLICE lines is about 2 ms.

    Every few slices the loop is left idle for a millisecond. Yielding alone kept the main thread holding the GIL
    all through the check, and the threads of the SQLite driver (aiosqlite) waited for it at every step: a directory
    reload took a second instead of milliseconds, and a single call that needed it waited as long (0.8-1.1 s, once
    per 100,000-line submission). The pauses cost about 0.4 s of those 100,000 lines' 1.0 s.
    """
    errors: list[LineError] = []
    check = SubjectCheck(targets, errors)
    rows = iter(_rows(None, body, media_type, errors))
    for turn in itertools.count(1):
        if check.feed(itertools.islice(rows, UPLOAD_SLICE)) < UPLOAD_SLICE or check.full:
            break  # the file is over, or over MAX_LINES
        await asyncio.sleep(UPLOAD_PAUSE if turn % UPLOAD_PAUSE_EVERY == 0 else 0)
    return _verdict(check)
