"""Numbers as JSON Schema means them: a boolean is not an integer or a number (pydantic's lax mode reads true as 1)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

__all__ = ["JsonFloat", "JsonInteger"]


def _no_boolean(kind: str, type_code: str) -> Any:
    # pydantic's lax int and float read true as 1. Digits in a string stay accepted: the CLI's --param and a CSV of
    # subjects send every value as text, and "2024" cannot be mistaken for anything but 2024.
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(type_code, f"Input should be a valid {kind}, not a boolean")
        return value

    return BeforeValidator(check)


JsonInteger = Annotated[int, _no_boolean("integer", "int_type")]
"""An integer parameter: a JSON integer (or its digits as text), never a boolean."""

JsonFloat = Annotated[float, _no_boolean("number", "float_type")]
"""A binary floating-point parameter (format float or double): a JSON number (or its text), never a boolean."""
