"""JSON-facing value types shared by the SOAP and REST engines: exact decimals, base64 bytes, derived-model bases.

A decimal travels as a JSON string ("12.30"), never a float, so JSON → XML → JSON keeps it exact; bytes travel
as base64 text. Models derived from a contract subclass `DerivedModel`, which enforces `choice` groups.
"""

from __future__ import annotations

import base64
import binascii
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema, model_validator

from schemas.numbers import JsonFloat, JsonInteger

__all__ = ["Base64", "DecimalText", "DerivedModel", "JsonFloat", "JsonInteger", "choice_schema"]

_DECIMAL_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)$"
_DECIMAL_RE = re.compile(_DECIMAL_PATTERN)


def _decimal(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a decimal must be a string such as '1234.50', not a boolean")
    if isinstance(value, float):
        raise ValueError("a decimal must be a string such as '1234.50', not a JSON float (it may not be exact)")
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL_RE.match(text):
            raise ValueError("not a decimal number such as '1234.50'")
        try:
            return Decimal(text)
        except InvalidOperation:
            raise ValueError("not a decimal number") from None
    return value


DecimalText = Annotated[
    Decimal,
    BeforeValidator(_decimal),
    PlainSerializer(lambda value: format(value, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "decimal", "pattern": _DECIMAL_PATTERN, "examples": ["1234.50"]}),
]
"""An exact decimal: a string in JSON (integers accepted on input), a Decimal in Python."""


def _base64(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value)  # already the raw bytes (from the upstream's parser)
    if isinstance(value, str):
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("not valid base64 text") from None
    raise ValueError("base64 data must be a string")


Base64 = Annotated[
    bytes,
    BeforeValidator(_base64),
    PlainSerializer(lambda value: base64.b64encode(value).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]
"""Binary data: base64 text in JSON, raw bytes in Python."""


class DerivedModel(BaseModel):
    """Base of models derived from an upstream contract: unknown keys refused, fields named by their aliases.

    `_choices` lists each `choice` group as (member aliases, required); exactly one member may be set
    (at most one when the group is optional).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)
    _choices: ClassVar[tuple[tuple[tuple[str, ...], bool], ...]] = ()

    @model_validator(mode="after")
    def _one_of_each_choice(self) -> DerivedModel:
        if not self._choices:
            return self
        by_alias = {field.alias or name: name for name, field in type(self).model_fields.items()}
        for members, required in self._choices:
            present = [alias for alias in members if _present(getattr(self, by_alias[alias]))]
            if len(present) > 1:
                raise ValueError(f"only one of {', '.join(members)} may be given, got {', '.join(present)}")
            if required and not present:
                raise ValueError(f"one of {', '.join(members)} is required")
        return self


def _present(value: Any) -> bool:
    return value is not None and value != []


def choice_schema(choices: tuple[tuple[tuple[str, ...], bool], ...]) -> dict[str, Any]:
    """JSON Schema keywords saying which properties exclude each other."""
    clauses = []
    for members, required in choices:
        one = [{"required": [member]} for member in members]
        if required:
            clauses.append({"oneOf": one})
        else:
            clauses.append({"not": {"anyOf": [{"required": [a, b]} for a in members for b in members if a < b]}})
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"allOf": clauses}
