"""RFC 9457 problem details: one exception class the request path raises, one way to render it."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:msjx-gateway:problem:"


class Problem(Exception):
    """An answer that is not a success. `code` is stable: clients and the audit log match on it.

    `context` carries what was learnt before the failure (caller, key id, service …) so that the
    refusal is audited with as much as is known; it never reaches the client.
    """

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
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
        422,
        "validation_failed",
        "Request body is invalid",
        f"{first['field']}: {first['message']}" if first["field"] else first["message"],
        errors=items,
    )
