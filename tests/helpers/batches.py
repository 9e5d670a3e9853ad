"""Helpers of the batch tests: grants that allow batch, submitting, waiting for a state, reading every result line."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from simulators.enterprises import ENTERPRISES
from tests.helpers.gateways import PURPOSE, RunningGateway

BATCH_PURPOSE = "XM-2025-BATCH"


async def batch_grant(
    gateway: RunningGateway,
    service: str = "credit",
    operation: str = "dishonest-debtor",
    *,
    fields: list[str] | None = None,
    purpose: str = BATCH_PURPOSE,
    daily_quota: int | None = None,
    share_methods: tuple[str, ...] = ("api", "batch"),
) -> dict[str, Any]:
    adapter = gateway.runtime.adapters[service]
    body: dict[str, Any] = {
        "caller_id": "platform",
        "service": service,
        "operation": operation,
        "purpose": purpose,
        "fields": fields or list(adapter.operations[operation].fields),
        "valid_to": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        "share_methods": list(share_methods),
    }
    if daily_quota is not None:
        body["daily_quota"] = daily_quota
    async with gateway.client(gateway.admin) as client:
        answer = await client.post("/v1/grants", json=body)
    assert answer.status_code == 201, answer.text
    gateway.runtime.directory.invalidate()
    return answer.json()


def usccs(count: int, start: int = 0) -> list[str]:
    return [enterprise.uscc for enterprise in ENTERPRISES[start : start + count]]


async def submit(
    client: httpx.AsyncClient, subjects: list[str], operations: list[dict[str, Any]] | None = None, **extra: Any
) -> httpx.Response:
    body = {
        "purpose": extra.pop("purpose", BATCH_PURPOSE),
        "operations": operations or [{"service": "credit", "operation": "dishonest-debtor"}],
        "subjects": [{"uscc": uscc} for uscc in subjects],
    }
    return await client.post("/v1/batches", json=body)


async def wait_state(
    client: httpx.AsyncClient, batch_id: str, states: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await client.get(f"/v1/batches/{batch_id}")
        assert answer.status_code == 200, answer.text
        status = answer.json()
        if status["state"] in states:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"batch {batch_id} stayed {status['state']}: {status}")
        await asyncio.sleep(0.1)


async def all_lines(client: httpx.AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/v1/batches/{batch_id}/results")
    assert answer.status_code == 200, answer.text
    return [orjson.loads(line) for line in answer.content.splitlines() if line]


__all__ = ["PURPOSE", "all_lines", "batch_grant", "submit", "usccs", "wait_state"]
