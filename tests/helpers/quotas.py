"""Grants with quota and rate terms, issued through the admin API, and calls that count against them."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from gateway.access.directory import GrantInfo
from simulators.enterprises import DEMO_USCC
from tests.helpers.calls import INVOKE
from tests.helpers.gateways import PURPOSE, RunningGateway


def grant_info(daily_quota: int | None = None, rate_limit: str | None = None) -> GrantInfo:
    now = datetime.now(UTC)
    return GrantInfo(
        "g-" + secrets.token_hex(8),
        "platform",
        "credit",
        "dishonest-debtor",
        PURPOSE,
        ("uscc",),
        now,
        now + timedelta(days=1),
        "市数据管理局",
        daily_quota,
        rate_limit,
    )


async def admin_grant(gw: RunningGateway, **terms: Any) -> dict[str, Any]:
    body = {
        "caller_id": "platform",
        "service": "credit",
        "operation": "dishonest-debtor",
        "purpose": terms.pop("purpose", "QUOTA-1"),
        "fields": ["listed"],
        "valid_to": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        **terms,
    }
    async with gw.client(gw.admin) as admin:
        response = await admin.post("/v1/grants", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def call_for_purpose(gw: RunningGateway, purpose: str) -> httpx.Response:
    async with gw.client() as client:
        return await client.post(INVOKE, json={"purpose": purpose, "params": {"uscc": DEMO_USCC}})
