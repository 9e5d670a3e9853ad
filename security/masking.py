"""Masking of personal identifiers: by schema mark for documents, by pattern for log lines (a safety net).

Two layers. Documents shown outside a decrypted audit payload go through `mask_document`, which masks every
field a schema marks with `schemas.sensitive.Sensitive`. Log records go through `install_log_masking`, which
rewrites every record of every logger as it is made: ID numbers, mobile numbers, bank card numbers, USCCs, PEM
blocks, signature values and long base64 tokens (keys) are replaced. Code must still never log payloads; the
net only catches what slips through.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel

from schemas.sensitive import SENSITIVE_KEY

STARS = "*"


def _keep(value: str, head: int, tail: int) -> str:
    if len(value) <= head + tail:
        return STARS * max(len(value), 3)
    return value[:head] + STARS * (len(value) - head - tail) + (value[-tail:] if tail else "")


def mask_id_number(value: str) -> str:
    """110101199003071234 → 110***********1234."""
    return _keep(value, 3, 4) if len(value) >= 15 else _keep(value, 1, 1)


def mask_phone(value: str) -> str:
    """13812345678 → 138****5678; other numbers keep their last 4."""
    digits = value.strip()
    return _keep(digits, 3, 4) if len(digits) == 11 else _keep(digits, 0, 4)


def mask_bank_account(value: str) -> str:
    """6222021234567890123 → 6222***********0123."""
    compact = value.replace(" ", "")
    return _keep(compact, 4, 4) if len(compact) >= 12 else _keep(compact, 0, 4)


def mask_name(value: str) -> str:
    """张三 → 张*, 欧阳娜娜 → 欧***."""
    return value[:1] + STARS * max(len(value) - 1, 1) if value else value


def mask_address(value: str) -> str:
    return value[:6] + STARS * 3 if len(value) > 6 else STARS * 3


MASKERS: dict[str, Callable[[str], str]] = {
    "id_number": mask_id_number,
    "phone": mask_phone,
    "bank_account": mask_bank_account,
    "name": mask_name,
    "address": mask_address,
}


def mask_value(kind: str, value: Any) -> Any:
    """Mask one value of a sensitive kind; None stays None, anything unknown becomes stars."""
    if value is None:
        return None
    masker = MASKERS.get(kind)
    text = str(value)
    return masker(text) if masker is not None else STARS * 3


# --- documents, by schema ------------------------------------------------------------------------------------


def mask_document(schema: type[BaseModel] | Mapping[str, Any], document: Any) -> Any:
    """A copy of `document` with every field `schema` marks sensitive masked (nested objects and lists included)."""
    json_schema = _model_schema(schema) if isinstance(schema, type) else schema
    return _mask(json_schema, document, json_schema.get("$defs", {}))


@cache
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return defs.get(ref.removeprefix("#/$defs/"), {})
    return schema


def _mask(schema: Mapping[str, Any], value: Any, defs: Mapping[str, Any]) -> Any:
    schema = _resolve(schema, defs)
    kind = schema.get(SENSITIVE_KEY)
    if isinstance(kind, str):
        if isinstance(value, list):
            return [mask_value(kind, item) for item in value]
        return mask_value(kind, value)
    for option in schema.get("anyOf", ()) or schema.get("oneOf", ()) or schema.get("allOf", ()):
        masked = _mask(option, value, defs)
        if masked is not value:
            return masked
    if isinstance(value, Mapping):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        result = {}
        for name, item in value.items():
            sub = properties.get(name) or (extra if isinstance(extra, Mapping) else None)
            result[name] = _mask(sub, item, defs) if sub is not None else item
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_mask(schema["items"], item, defs) for item in value]
    return value


# --- text and logs, by pattern -------------------------------------------------------------------------------

_EDGE_BEFORE = r"(?<![0-9A-Za-z])"
_EDGE_AFTER = r"(?![0-9A-Za-z])"
_USCC_CHAR = "0-9A-HJ-NPQRTUWXY"
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?-----END [A-Z0-9 ]+-----", re.DOTALL),
        lambda m: "[redacted PEM]",
    ),
    # RFC 9421 signature values and RFC 9530 digests: label=:base64:
    (re.compile(r"=:[A-Za-z0-9+/]{16,}={0,2}:"), lambda m: "=:[redacted]:"),
    (
        re.compile(
            _EDGE_BEFORE
            + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]"
            + _EDGE_AFTER
        ),
        lambda m: mask_id_number(m.group(0)),
    ),
    (re.compile(_EDGE_BEFORE + f"[{_USCC_CHAR}]{{2}}\\d{{6}}[{_USCC_CHAR}]{{10}}" + _EDGE_AFTER), lambda m: _uscc(m)),
    (re.compile(_EDGE_BEFORE + r"1[3-9]\d{9}" + _EDGE_AFTER), lambda m: mask_phone(m.group(0))),
    (re.compile(_EDGE_BEFORE + r"\d{16,19}" + _EDGE_AFTER), lambda m: mask_bank_account(m.group(0))),
    # Base64 tokens long enough to be keys (a 32-byte key is 44 characters); hex digests and file paths are left alone.
    (
        re.compile(r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[+/=])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])"),
        lambda m: m.group(0) if _looks_like_path(m.group(0)) else "[redacted base64]",
    ),
]
# A segment of a file path: one case (with digits), or a capitalised word. A random base64 segment of a few
# characters mixes cases and digits, so a 44-character key passes for a path with a probability below 1e-9.
_PATH_SEGMENT = re.compile(r"[a-z0-9]*|[A-Z0-9]*|[A-Z][a-z0-9]*")


def _looks_like_path(token: str) -> bool:
    """`/usr/lib/python3/site` (a traceback's file path cut at `-` or `.`), not a key that happens to hold `/`."""
    if "/" not in token or "+" in token or "=" in token:
        return False
    return all(_PATH_SEGMENT.fullmatch(segment) for segment in token.split("/"))


def _uscc(match: re.Match[str]) -> str:
    return match.group(0)[:8] + STARS * 10


def mask_text(text: str) -> str:
    """Replace personal identifiers, keys and signatures in free text."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class MaskingFilter(logging.Filter):
    """Masks a record in place: its message (with arguments merged in) and its exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


def mask_record(record: logging.LogRecord) -> None:
    """Mask the message and each argument separately, so formatters that read `args` (uvicorn's) keep working."""
    if getattr(record, "_msjx_masked", False):
        return
    if isinstance(record.msg, str):
        record.msg = mask_text(record.msg)
    else:
        record.msg = mask_text(str(record.msg))
    if isinstance(record.args, Mapping):
        record.args = {key: _mask_arg(value) for key, value in record.args.items()}
    elif isinstance(record.args, tuple):
        record.args = tuple(_mask_arg(value) for value in record.args)
    if record.exc_info and not record.exc_text:
        record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = mask_text(record.exc_text)
    if record.stack_info:
        record.stack_info = mask_text(record.stack_info)
    record._msjx_masked = True


def _mask_arg(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_text(value if isinstance(value, str) else str(value))


_installed: list[Callable[..., logging.LogRecord]] = []


def install_log_masking() -> None:
    """Mask every log record of every logger from now on, whichever handler writes it. Idempotent."""
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        mask_record(record)
        return record

    _installed.append(previous)
    logging.setLogRecordFactory(factory)


def uninstall_log_masking() -> None:
    if _installed:
        logging.setLogRecordFactory(_installed.pop())
