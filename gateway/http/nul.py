"""NUL characters are refused wherever text comes in: PostgreSQL's text cannot hold one, so a NUL passed on ended in
a 500 there (and was stored as is on SQLite). One 422 `nul_character`, naming where it was."""

from __future__ import annotations

from typing import Any

from gateway.http.problems import Problem
from schemas.problems import ProblemCode

NUL = "\x00"


def nul_problem(field: str) -> Problem:
    message = "holds a NUL character (U+0000), which no text here may hold"
    return Problem(
        ProblemCode.NUL_CHARACTER,
        f"{field}: {message}",
        errors=[{"field": field, "message": message, "type": ProblemCode.NUL_CHARACTER}],
    )


def nul_field(document: Any, path: str = "") -> str | None:
    """The path (`a/0/b`) of the first key or string in a JSON document holding a NUL; None when none does."""
    if isinstance(document, str):
        return path if NUL in document else None
    if isinstance(document, dict):
        for key, value in document.items():
            child = f"{path}/{key}" if path else str(key)
            if NUL in key:
                return child
            found = nul_field(value, child)
            if found is not None:
                return found
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found = nul_field(value, f"{path}/{index}" if path else str(index))
            if found is not None:
                return found
    return None


def nul_in_target(path: str, query_string: bytes) -> str | None:
    """`path` or `query` when the request's decoded path or its query string holds a NUL (%00), else None."""
    if NUL in path:
        return "path"
    if b"%00" in query_string or b"\x00" in query_string:
        return "query"
    return None
