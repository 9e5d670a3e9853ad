"""A bound on JSON nesting, checked before any parser recurses: Python's `json` raises RecursionError (a crash,
not a refusal) at about 1,000 levels, and nothing the gateway reads or writes needs more than a few."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from schemas.errors import MsjxError

MAX_JSON_DEPTH = 64

# A string, escapes included; unrolled (runs of plain bytes, then one escape) so that it does not try an
# alternation at every byte.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Every byte but the four brackets, deleted by bytes.translate; what is left is scored +1 / -1 (see below).
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_NOT_BRACKETS_OR_QUOTES = bytes(byte for byte in range(256) if byte not in b'[]{}"')
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


class JsonTooDeep(MsjxError, ValueError):
    """The document nests arrays and objects deeper than allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


def json_depth_exceeds(document: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `document` opens more than `limit` arrays or objects inside each other (strings do not count).

    Cheap for what real bodies look like: a document with at most `limit` brackets in all cannot be deeper; others
    take one pass in C over their brackets. Malformed JSON is judged as well as it can be; its parser refuses it.
    """
    data = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else document
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # The running depth over the brackets outside strings, all in C: a 100,000-line NDJSON upload (3 MB) took
    # 160 ms of the event loop with a regex match object a bracket, now about 30.
    brackets = _outside_strings(data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def _outside_strings(data: bytes) -> bytes:
    if b"\\" not in data:
        # No escapes, so no quote inside a string: strings are every other piece between quotes. After an unmatched
        # last quote the rest counts, as the pattern below leaves it.
        pieces = data.translate(None, _NOT_BRACKETS_OR_QUOTES).split(b'"')
        outside = pieces[::2]
        if len(pieces) % 2 == 0:
            outside.append(pieces[-1])
        return b"".join(outside)
    return _STRING.sub(b"", data)


def loads_bounded(document: bytes | str, *, limit: int = MAX_JSON_DEPTH, **options: Any) -> Any:
    """`json.loads(document, **options)` for a document no deeper than `limit`; JsonTooDeep otherwise."""
    if json_depth_exceeds(document, limit):
        raise JsonTooDeep(limit)
    return json.loads(document, **options)
