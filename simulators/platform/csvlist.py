"""A department's 名单类 list (CSV: uscc, name, amount), validated line by line before anything is paid.

Every problem is reported at once with its line number (一次性告知): a bad check character, a duplicate, an
enterprise the platform's register does not know, a name that is not the registered one, a bad amount. A list with
any problem is refused whole: the department corrects it and uploads it again, and nothing is paid meanwhile.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from schemas.uscc import uscc_error

COLUMNS = ("uscc", "name", "amount")
_MAX_LINES = 100_000


@dataclass(frozen=True)
class ListEntry:
    line: int
    uscc: str
    name: str
    amount: Decimal


@dataclass(frozen=True)
class ListError:
    line: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, {self.column}: {self.message}"


class ListRejected(Exception):
    """The list has errors; `errors` names every one. Nothing of it may be paid."""

    def __init__(self, source: str, errors: list[ListError]) -> None:
        super().__init__(f"{source}: {len(errors)} error(s); first: {errors[0]}")
        self.source = source
        self.errors = errors


def _decode(raw: bytes) -> str:
    # Departments export from Excel: UTF-8 (with or without BOM) or GBK; anything else is refused by line 1.
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ListRejected("list", [ListError(1, "file", "the file is neither UTF-8 nor GBK text")])


def _amount(text: str, default: Decimal) -> tuple[Decimal | None, str | None]:
    if not text.strip():
        return default, None
    try:
        value = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        return None, f"{text!r} is not an amount in yuan"
    if not value.is_finite() or value <= 0:
        return None, f"{text!r} must be more than 0"
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        return None, f"{text!r} has more than 2 decimal places"
    return value.quantize(Decimal("0.01")), None


def read_list(
    path: Path,
    *,
    registered_name: Callable[[str], str | None],
    default_amount: Decimal,
) -> list[ListEntry]:
    """Entries of a valid list; ListRejected naming every bad line otherwise.

    `registered_name(uscc)` is the platform's enterprise register: the registered name, or None if unknown.
    """
    text = _decode(path.read_bytes())
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(column.strip().lower() for column in header) != COLUMNS:
        raise ListRejected(path.name, [ListError(1, "header", f"the first line must be {','.join(COLUMNS)}")])
    errors: list[ListError] = []
    entries: list[ListEntry] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(reader, start=2):
        if number > _MAX_LINES:
            errors.append(ListError(number, "file", f"a list has at most {_MAX_LINES - 1} lines"))
            break
        if not row or not any(cell.strip() for cell in row):
            continue  # blank lines are harmless
        if len(row) != len(COLUMNS):
            errors.append(ListError(number, "line", f"{len(row)} columns, expected {len(COLUMNS)}"))
            continue
        uscc, name, amount_text = (cell.strip() for cell in row)
        problem = uscc_error(uscc)
        if problem is not None:
            errors.append(ListError(number, "uscc", problem))
            continue
        if uscc in seen:
            errors.append(ListError(number, "uscc", f"{uscc} is listed already on line {seen[uscc]}"))
            continue
        seen[uscc] = number
        registered = registered_name(uscc)
        if registered is None:
            errors.append(ListError(number, "uscc", f"{uscc} is not an enterprise in the platform's register"))
            continue
        if name != registered:
            errors.append(ListError(number, "name", f"{name!r} is not the registered name {registered!r}"))
            continue
        amount, amount_problem = _amount(amount_text, default_amount)
        if amount is None:
            errors.append(ListError(number, "amount", amount_problem or "invalid"))
            continue
        entries.append(ListEntry(number, uscc, name, amount))
    if errors:
        raise ListRejected(path.name, errors)
    if not entries:
        raise ListRejected(path.name, [ListError(2, "file", "the list names no enterprise")])
    return entries
