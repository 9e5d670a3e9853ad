"""A bound on JSON nesting, checked before any parser recurses: Python's `json` raises RecursionError (a crash,
not a refusal) at about 1,000 levels, and nothing the gateway reads or writes needs more than a few."""

from __future__ import annotations

import json
import re
from typing import Any

from schemas.errors import MsjxError

MAX_JSON_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class JsonTooDeep(MsjxError, ValueError):
    """The document nests arrays and objects deeper than allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


def json_depth_exceeds(document: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `document` opens more than `limit` arrays or objects inside each other (strings do not count).

    Cheap for what real bodies look like: a document with at most `limit` brackets in all cannot be deeper, and a
    deep one is found after `limit + 1` brackets. Malformed JSON is judged as well as it can be; its parser refuses it.
    """
    data = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else document
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b"", data)):
        if bracket[0] in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads_bounded(document: bytes | str, *, limit: int = MAX_JSON_DEPTH, **options: Any) -> Any:
    """`json.loads(document, **options)` for a document no deeper than `limit`; JsonTooDeep otherwise."""
    if json_depth_exceeds(document, limit):
        raise JsonTooDeep(limit)
    return json.loads(document, **options)
