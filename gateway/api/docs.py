"""OpenAPI fragments shared by the routes: problem responses and signed-request notes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway.http.problems import PROBLEM_CONTENT_TYPE
from schemas.api import ProblemDetails

SIGNED = (
    "Signed with RFC 9421 HTTP Message Signatures (label `msjx`; `ed25519`, or `sm2-sm3` with an SM2 key) over"
    " `@method`, `@target-uri` and,"
    " with a body, `content-digest` (RFC 9530, sha-256); parameters `created`, `keyid`, `nonce` are required."
)

_DESCRIPTIONS = {
    400: "A required header (Idempotency-Key) is missing or malformed",
    401: "Signature missing, malformed, expired, invalid, replayed, or key unknown/revoked",
    403: "No grant for this service, operation and purpose, or a role is missing",
    404: "Unknown service, operation or resource",
    409: "Conflicts with what exists, or a request with this Idempotency-Key is in flight",
    413: "Body too large",
    422: "Body invalid; `errors` names each field by its path",
    429: "Quota or rate limit reached, or too many requests from this address failed authentication",
    502: "Upstream failed or answered outside its contract",
    503: "Audit log or upstream unavailable; nothing was released",
    504: "Upstream timed out",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """A request body documented from a model, for routes that read the raw body themselves (to check its digest)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }
