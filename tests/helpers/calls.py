"""Signed calls to a test gateway, their answers, and the audit record they left."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from gateway.storage.models import AuditRecord
from security.signatures import sign_request
from simulators.enterprises import DEMO_USCC
from tests.helpers.gateways import PURPOSE, Identity, RunningGateway

INVOKE = "/v1/services/credit/dishonest-debtor"


def body_for(uscc: str, purpose: str = PURPOSE) -> bytes:
    return orjson.dumps({"purpose": purpose, "params": {"uscc": uscc}})


def signed(
    gw: RunningGateway,
    identity: Identity,
    path: str = INVOKE,
    body: bytes | None = None,
    *,
    key_id: str | None = None,
    private_key: Ed25519PrivateKey | None = None,
    created: dt.datetime | None = None,
    nonce: str | None = None,
) -> httpx.Request:
    content = body_for(DEMO_USCC) if body is None else body
    request = httpx.Request("POST", gw.url + path, content=content, headers={"content-type": "application/json"})
    sign_request(
        "POST",
        str(request.url),
        request.headers,
        content,
        key_id=key_id or identity.key_id,
        private_key=private_key or identity.private_key,
        created=created,
        nonce=nonce,
    )
    return request


async def send(request: httpx.Request) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.send(request)


async def last_record(gw: RunningGateway) -> dict[str, Any]:
    async with gw.runtime.engine.connect() as connection:
        row = (
            await connection.execute(
                select(AuditRecord.__table__).order_by(AuditRecord.ts_ms.desc(), AuditRecord.height.desc()).limit(1)
            )
        ).first()
    assert row is not None, "no audit record was written"
    return dict(row._mapping)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with this status and stable code; its request id, when it has one, is the
    one in the X-Request-Id header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == code, problem
    assert problem["status"] == status
    assert problem["type"].endswith(code)
    if "request_id" in problem:
        assert problem["request_id"] == response.headers["x-request-id"]
    return problem
