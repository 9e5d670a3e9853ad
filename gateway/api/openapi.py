"""Finishing the OpenAPI document: the RFC 9421 signature as security schemes, and the error answers every route has.

FastAPI documents its own 422 as `application/json` (HTTPValidationError) although the gateway answers every error
as problem+json, and it knows nothing of the statuses that any signed route can give (a body over the limit, a rate
limit, the audit store down, an internal error). This module states them once, for every operation.
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute

from gateway.api.docs import SIGNED
from gateway.http.problems import PROBLEM_CONTENT_TYPE

PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}
PUBLIC: list[dict[str, list[str]]] = []  # an operation's `security` when it needs no signature
SIGNATURE_REQUIREMENT = [{"signature": [], "signatureInput": []}]


def is_signed_route(route: object) -> bool:
    """Whether a route answers only signed requests: every documented APIRoute not marked public (`openapi_extra`
    `{"security": []}`), as the OpenAPI document says."""
    if not isinstance(route, APIRoute) or not route.include_in_schema:
        return False
    return (route.openapi_extra or {}).get("security") != PUBLIC


SECURITY_SCHEMES = {
    "signature": {
        "type": "apiKey",
        "in": "header",
        "name": "Signature",
        "description": SIGNED
        + " This header carries the signature itself (`msjx=:<base64>:`); it is not a static key: each request is"
        " signed anew with the caller's private key (Ed25519 or SM2), whose public key an admin registered"
        " (`POST /v1/callers`). `gateway.client.SignatureAuth` (httpx) does it for Python callers.",
    },
    "signatureInput": {
        "type": "apiKey",
        "in": "header",
        "name": "Signature-Input",
        "description": "RFC 9421 Signature-Input of the same signature, e.g."
        ' `msjx=("@method" "@target-uri" "content-digest");created=1764900000;keyid="platform.1a2b3c";'
        'nonce="…"`. A request with a body also sends `Content-Digest` (RFC 9530, sha-256); a payment also covers'
        " `idempotency-key`.",
    },
}

# Statuses any signed route can answer, whatever it does.
SIGNED_STATUSES = {
    401: "Signature missing, malformed, expired, invalid, replayed, or key unknown/revoked",
    413: "Body too large (over 1 MiB)",
    429: "Too many requests: a quota or rate limit was reached, or too many requests from this address failed"
    " authentication (see Retry-After)",
    500: "Internal error; the problem's `request_id` names it in the gateway's log",
    503: "The audit log (or another store the call needs) is unavailable; nothing was released (see Retry-After)",
}
PUBLIC_STATUSES = {500: SIGNED_STATUSES[500]}
VALIDATION = "Request invalid; `errors` names each field (body, `query/…`, `params/…`) by its path"


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}}}


def finish(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the security schemes and the common problem answers to a FastAPI OpenAPI document, in place."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            signed = operation.get("security") != PUBLIC
            if signed:
                operation["security"] = SIGNATURE_REQUIREMENT
            responses = operation.setdefault("responses", {})
            if "422" in responses and PROBLEM_CONTENT_TYPE not in responses["422"].get("content", {}):
                responses["422"] = _problem(VALIDATION)
            for status, description in (SIGNED_STATUSES if signed else PUBLIC_STATUSES).items():
                responses.setdefault(str(status), _problem(description))
    # FastAPI's validation error shapes are never sent: every 422 above is problem+json.
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    return schema
