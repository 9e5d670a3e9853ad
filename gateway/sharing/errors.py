"""Problems of the sharing workflow: body parsing with domain codes, and 422s that list every fault at once."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.json_bodies import load_body
from gateway.problems import Problem, validation_problem
from gateway.sharing.workdays import CalendarYearUnsupported

T = TypeVar("T", bound=BaseModel)

# Validators in schemas/sharing.py raise these error types; they become the problem's code.
DOMAIN_TYPES = frozenset(
    {
        "legal_basis_kind_unknown",
        "share_attribute_unknown",
        "share_method_unknown",
        "update_frequency_unknown",
        "classification_unknown",
        "quota_invalid",
    }
)


def parse_body(body: bytes, model: type[T], *, optional: bool = False) -> T:
    """The body as `model`; an empty body is `{}` when `optional`. Every invalid field is named at once."""
    if optional and not body.strip():
        document: Any = {}
    else:
        document = load_body(body)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors()
        problem = validation_problem(errors)
        domain = next((error["type"] for error in errors if error["type"] in DOMAIN_TYPES), None)
        if domain is not None:
            problem.code = domain
        raise problem from None


class Faults:
    """Collects the faults of one body so that a single 422 lists them all (一次性告知), not one per try."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.items: list[dict[str, str]] = []

    def add(self, field: str, code: str, message: str) -> None:
        self.items.append({"field": field, "message": message, "type": code})

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            raise Problem(422, first["type"], self.title, f"{first['field']}: {first['message']}", errors=self.items)


def invalid(field: str, code: str, message: str, title: str = "Request is invalid") -> Problem:
    return Problem(422, code, title, f"{field}: {message}", errors=[{"field": field, "message": message, "type": code}])


def forbidden(code: str, detail: str, field: str | None = None) -> Problem:
    """403; with `field`, the problem names the field of the body that the caller may not set so."""
    if field is None:
        return Problem(403, code, "Not allowed for this caller", detail)
    errors = [{"field": field, "message": detail, "type": code}]
    return Problem(403, code, "Not allowed for this caller", f"{field}: {detail}", errors=errors)


def calendar_problem(exc: CalendarYearUnsupported, field: str | None = None) -> Problem:
    """A day outside every calendar source's years (absurd input): 422, naming the field when there is one.

    A year merely without a loaded schedule is never refused: its deadlines are provisional.
    """
    name = field or ""
    return Problem(
        422,
        "calendar_year_unsupported",
        "Working days unknown for that year",
        f"{name}: {exc}" if name else str(exc),
        errors=[{"field": name, "message": str(exc), "type": "calendar_year_unsupported"}],
    )
