"""RFC 9457 problem details: one exception class the request path raises, one way to render it."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from schemas.errors import MsjxError
from schemas.problems import ProblemCode

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:msjx-gateway:problem:"


class Problem(MsjxError):
    """An answer that is not a success. `code` is stable: clients and the audit log match on it.

    The status and title default to the code's own (schemas/problems.py); a code answered with several statuses
    names the one it means, and a title may say more for this occasion.

    `context` carries what was learnt before the failure (caller, key id, service …) so that the
    refusal is audited with as much as is known; it never reaches the client.
    """

    def __init__(
        self,
        code: ProblemCode,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        if status is None:
            status = code.status
        elif status not in code.statuses:
            # A code is a contract: answering it with a status the registry does not list is a bug here.
            raise ValueError(f"{code} is answered with {sorted(code.statuses)}, not {status}")
        self.status = status
        self.code = code
        self.title = code.title if title is None else title
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.context = context or {}

    def to_dict(self, request_id: str | None = None, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        if request_id:
            body["request_id"] = request_id
        if self.errors:
            body["errors"] = self.errors
        return body

    def render(self, request_id: str | None = None, instance: str | None = None) -> bytes:
        return orjson.dumps(self.to_dict(request_id, instance))

    def response(
        self, request_id: str | None = None, instance: str | None = None, body: bytes | None = None
    ) -> Response:
        headers = dict(self.headers)
        if request_id:
            headers["X-Request-Id"] = request_id
        return Response(
            body if body is not None else self.render(request_id, instance),
            status_code=self.status,
            media_type=PROBLEM_CONTENT_TYPE,
            headers=headers,
        )


def validation_problem(errors: list[dict[str, Any]], prefix: tuple[str | int, ...] = ()) -> Problem:
    """422 naming every invalid field by its JSON path, from pydantic's error list."""
    items = []
    for error in errors:
        path = "/".join(str(part) for part in (*prefix, *error.get("loc", ())))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        items.append({"field": path, "message": message, "type": error.get("type", "invalid")})
    first = items[0] if items else {"field": "", "message": "invalid"}
    return Problem(
        ProblemCode.VALIDATION_FAILED,
        f"{first['field']}: {first['message']}" if first["field"] else first["message"],
        errors=items,
    )
