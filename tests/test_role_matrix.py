"""Every route of the OpenAPI × every role and an unsigned caller, against the table of who may do what.

The routes come from /openapi.json, so a new route without a row in tests/helpers/api_access.py fails here. A role the
table lets through must not be refused for its role (it may still be refused for what it asks: no grant, an
unknown id, an invalid body); any other role gets 403 `role_forbidden`, and an unsigned caller 401 on a signed route.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.api_access import ACCESS, ROLES, UNSIGNED
from tests.helpers.sharing_world import World, sharing_world

# One caller per role (tests/helpers/sharing_world.py seeds them).
CALLER_OF = {
    "platform": "platform",
    "department": "data-officer",
    "officer": "officer",
    "coordinator": "coordinator",
    "admin": "admin",
}
PATH_VALUES = {"service": "credit", "operation": "dishonest-debtor", "year": "2099"}


@pytest.fixture
async def world(tmp_path: Path, credit_url: str) -> AsyncIterator[World]:
    # Every route unsigned, from one address: above the default flood bound (60 a minute) once the API grows.
    async with sharing_world("sqlite", tmp_path, credit_url, unauthenticated_rate="10000/minute") as world:
        yield world


def concrete(path: str) -> str:
    """The path with each parameter filled: a real service and operation, otherwise an id nothing has."""
    return re.sub(r"\{(\w+)\}", lambda match: PATH_VALUES.get(match[1], "no-such-id"), path)


async def send(world: World, who: str, method: str, path: str) -> httpx.Response:
    body = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
    if who == UNSIGNED:
        async with httpx.AsyncClient(base_url=world.url, timeout=30) as client:
            return await client.request(method, concrete(path), **body)
    async with world.client(CALLER_OF[who]) as client:
        return await client.request(method, concrete(path), **body)


async def test_the_table_has_one_row_per_route_of_the_openapi(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.url) as client:
        spec = (await client.get("/openapi.json")).json()
    routes = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    missing = sorted(routes - set(ACCESS))
    assert not missing, f"routes without a row in tests/helpers/api_access.py (say who may call them): {missing}"
    stale = sorted(set(ACCESS) - routes)
    assert not stale, f"rows for routes the OpenAPI no longer has: {stale}"


async def test_every_route_for_every_role(world: World, record_property: Callable[[str, Any], None]) -> None:
    wrong = []
    checked = 0
    for (method, path), allowed in sorted(ACCESS.items()):
        for who in (*ROLES, UNSIGNED):
            response = await send(world, who, method, path)
            problem = response.headers.get("content-type") == "application/problem+json"
            code = response.json()["code"] if problem else None
            refused_for_role = response.status_code == 401 or (response.status_code == 403 and code == "role_forbidden")
            if who in allowed:
                ok = not refused_for_role and response.status_code < 500
            elif who == UNSIGNED:
                ok = response.status_code == 401 and code == "signature_missing"
            else:
                ok = response.status_code == 403 and code == "role_forbidden"
            checked += 1
            if not ok:
                wrong.append(f"{method} {path} as {who}: {response.status_code} {code} (allowed: {sorted(allowed)})")
    record_property("routes", len(ACCESS))
    record_property("checked", checked)
    assert not wrong, "\n".join(wrong)
