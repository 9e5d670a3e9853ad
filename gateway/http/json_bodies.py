"""Request bodies as JSON: nesting bounded before any parser runs, every failure a 422 with a stable code."""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from adapters.jsondepth import MAX_JSON_DEPTH, json_depth_exceeds, loads_bounded
from gateway.http.nul import nul_field, nul_problem
from gateway.http.problems import Problem, validation_problem
from schemas.problems import ProblemCode

T = TypeVar("T", bound=BaseModel)


def too_deep() -> Problem:
    message = f"arrays and objects may nest at most {MAX_JSON_DEPTH} levels deep"
    return Problem(
        ProblemCode.JSON_TOO_DEEP,
        message,
        errors=[{"field": "", "message": message, "type": ProblemCode.JSON_TOO_DEEP}],
    )


def check_depth(body: bytes) -> None:
    """Refuse a body nested deeper than MAX_JSON_DEPTH. Run on every body as soon as it is read, before anything
    else looks at it; the parsers below check again, so no path can reach a recursive parser without it."""
    if json_depth_exceeds(body):
        raise too_deep()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def not_json() -> Problem:
    return Problem(ProblemCode.INVALID_JSON, "the request body must be a JSON object")


def load_body(body: bytes, *, exact: bool = False) -> Any:
    """The body's JSON document. With `exact`, every non-integer number is a Decimal: money never passes through
    a float. 422 `json_too_deep` or `invalid_json` otherwise."""
    check_depth(body)
    try:
        if exact:
            document = loads_bounded(body, parse_float=Decimal, parse_constant=_refuse_constant)
        else:
            document = orjson.loads(body)
    except ValueError:  # orjson.JSONDecodeError and json.JSONDecodeError are ValueErrors
        raise not_json() from None
    # JSON can carry a NUL only escaped: the walk runs only for a body that has the escape.
    if b"\\u0000" in body:
        field = nul_field(document)
        if field is not None:
            raise nul_problem(field)
    return document


def parse_body(
    body: bytes,
    model: type[T],
    *,
    exact: bool = False,
    optional: bool = False,
    domain_codes: Collection[str] = (),
) -> T:
    """The body as `model`, every invalid field named at once in one 422 (`validation_failed`).

    `exact`: numbers as decimals (see `load_body`). `optional`: an empty body is `{}`. `domain_codes`: error types
    the model's validators raise that are the problem's code when one of them is among the errors (the sharing
    workflow's, e.g. `legal_basis_kind_unknown`).
    """
    document: Any = {} if optional and not body.strip() else load_body(body, exact=exact)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors()
        problem = validation_problem(errors)
        domain = next((error["type"] for error in errors if error["type"] in domain_codes), None)
        if domain is not None:
            problem.code = ProblemCode(domain)
        raise problem from None
