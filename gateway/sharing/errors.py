"""Problems of the sharing workflow: its domain codes, and 422s that list every fault at once."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from gateway.http.problems import Problem
from gateway.sharing.workdays import CalendarYearUnsupported
from schemas.problems import ProblemCode

T = TypeVar("T", bound=BaseModel)

# Validators in schemas/sharing.py raise these error types; they become the problem's code (parse_body's
# domain_codes, in gateway/http/json_bodies.py).
DOMAIN_TYPES = frozenset(
    {
        ProblemCode.LEGAL_BASIS_KIND_UNKNOWN,
        ProblemCode.SHARE_ATTRIBUTE_UNKNOWN,
        ProblemCode.SHARE_METHOD_UNKNOWN,
        ProblemCode.UPDATE_FREQUENCY_UNKNOWN,
        ProblemCode.CLASSIFICATION_UNKNOWN,
        ProblemCode.QUOTA_INVALID,
        ProblemCode.DATA_USE_KIND_UNKNOWN,
    }
)
# What a plain pydantic error is called in a 一次性告知 answer: a stable code, whatever pydantic's version calls it.
GENERIC_CODES = {"missing": ProblemCode.FIELD_MISSING, "extra_forbidden": ProblemCode.FIELD_UNKNOWN}


class Faults:
    """Collects the faults of one body so that a single 422 lists them all (一次性告知), not one per try.

    Each fault has its own `code` (and the same in `type`, as in every other 422). The answer's top-level
    code is `code` when given (e.g. `request_incomplete`: "this is a list of faults"), else the first fault's.
    """

    def __init__(self, title: str, code: ProblemCode | None = None) -> None:
        self.title = title
        self.code = code
        self.items: list[dict[str, Any]] = []

    def add(self, field: str, code: ProblemCode, message: str, kind: str | None = None) -> None:
        self.items.append({"field": field, "message": message, "type": kind or code, "code": code})

    def add_validation(self, errors: list[dict[str, Any]]) -> None:
        """pydantic's errors, each named by its JSON path, with a domain code or a generic stable one."""
        for error in errors:
            field = "/".join(str(part) for part in error.get("loc", ()))
            kind = str(error.get("type", "invalid"))
            code = ProblemCode(kind) if kind in DOMAIN_TYPES else GENERIC_CODES.get(kind, ProblemCode.FIELD_INVALID)
            self.add(field, code, str(error.get("msg", "invalid")).removeprefix("Value error, "), kind)

    def __bool__(self) -> bool:
        return bool(self.items)

    def fields(self) -> set[str]:
        return {item["field"].split("/", 1)[0] for item in self.items}

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            count = len(self.items)
            detail = f"{first['field']}: {first['message']}"
            if self.code is not None:
                detail = f"{count} fault(s), all listed in errors; the first: {detail}"
            code = self.code or first["code"]
            raise Problem(code, detail, status=422, title=self.title, errors=self.items)


@cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    return TypeAdapter(Annotated[info.annotation, info])


def validate_collecting(model: type[T], document: Any, faults: Faults) -> tuple[T | None, dict[str, Any]]:
    """The body as `model` or None; either way the top-level fields that are valid on their own, so that the
    domain checks can still run on them and every fault goes into one answer (一次性告知). A `model`
    instance (built in code, e.g. by the demo) is taken as it is."""
    if isinstance(document, model):
        return document, {}
    if not isinstance(document, dict):
        faults.add("", ProblemCode.FIELD_INVALID, "the body must be a JSON object", "model_type")
        return None, {}
    try:
        return model.model_validate(document), {}
    except ValidationError as exc:
        faults.add_validation(exc.errors())
    broken = faults.fields()
    valid: dict[str, Any] = {}
    for name in model.model_fields:
        if name in document and name not in broken:
            try:
                valid[name] = _field_adapter(model, name).validate_python(document[name])
            except ValidationError:
                continue
    return None, valid


def invalid(field: str, code: ProblemCode, message: str, title: str = "Request is invalid") -> Problem:
    errors = [{"field": field, "message": message, "type": code}]
    return Problem(code, f"{field}: {message}", status=422, title=title, errors=errors)


def forbidden(code: ProblemCode, detail: str, field: str | None = None) -> Problem:
    """403; with `field`, the problem names the field of the body that the caller may not set so."""
    title = "Not allowed for this caller"
    if field is None:
        return Problem(code, detail, status=403, title=title)
    errors = [{"field": field, "message": detail, "type": code}]
    return Problem(code, f"{field}: {detail}", status=403, title=title, errors=errors)


def calendar_problem(exc: CalendarYearUnsupported, field: str | None = None) -> Problem:
    """A day outside every calendar source's years (absurd input): 422, naming the field when there is one.

    A year merely without a loaded schedule is never refused: its deadlines are provisional.
    """
    name = field or ""
    return Problem(
        ProblemCode.CALENDAR_YEAR_UNSUPPORTED,
        f"{name}: {exc}" if name else str(exc),
        errors=[{"field": name, "message": str(exc), "type": ProblemCode.CALENDAR_YEAR_UNSUPPORTED}],
    )
