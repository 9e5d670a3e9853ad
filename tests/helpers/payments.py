"""A test gateway granted the treasury's voucher operation, and the signed payments it takes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from gateway.storage.models import PaymentIntent, PaymentOutcome
from simulators import treasury as treasury_simulator
from tests.helpers.deployment import SUBMIT
from tests.helpers.gateways import PURPOSE, RunningGateway, running_gateway
from tests.helpers.services import check_redis, create_test_database, drop_database
from tests.helpers.treasury import clear_hold
from tests.helpers.upstreams import grant_all


class PayGateway:
    def __init__(self, gw: RunningGateway, treasury_url: str) -> None:
        self.gw = gw
        self.treasury_url = treasury_url

    @property
    def payments(self) -> Any:
        return self.gw.runtime.payments

    async def pay(
        self, body: dict[str, Any] | bytes, key: str | None, client: httpx.AsyncClient | None = None
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps({"purpose": PURPOSE, "params": body})
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = f'"{key}"'
        if client is not None:
            return await client.post(SUBMIT, content=content, headers=headers)
        async with self.gw.client() as own:
            return await own.post(SUBMIT, content=content, headers=headers)

    async def count(self, model: Any, *where: Any) -> int:
        async with self.gw.runtime.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    async def outcome(self, voucher_no: str) -> PaymentOutcome | None:
        async with self.gw.runtime.sessions() as session:
            return await session.get(PaymentOutcome, voucher_no)

    async def intent(self, voucher_no: str) -> PaymentIntent | None:
        async with self.gw.runtime.sessions() as session:
            return await session.get(PaymentIntent, voucher_no)


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def pay(request: pytest.FixtureRequest, tmp_path: Path, credit_url: str) -> AsyncIterator[PayGateway]:
    runner, port = await treasury_simulator.start_with_port("127.0.0.1", 0, data_dir=tmp_path / "treasury")
    treasury_url = f"http://127.0.0.1:{port}"
    overrides: dict[str, Any] = {
        "data_dir": tmp_path,
        "upstream_urls": {"credit": credit_url, "treasury": treasury_url},
        "upstream_timeout": 1.0,
        "payment_reconcile_seconds": 3600,  # tests run reconciliation passes themselves, when they mean to
        "redis_prefix": f"msjx-test-{secrets.token_hex(4)}",
    }
    if request.param == "postgres_redis":
        overrides["redis_url"] = await check_redis()
        overrides["database_url"] = await create_test_database()
    from gateway.settings import load_settings

    settings = load_settings(**overrides)
    try:
        async with running_gateway(settings) as gw:
            await grant_all(gw, "treasury")
            yield PayGateway(gw, treasury_url)
    finally:
        await clear_hold(treasury_url)
        await runner.cleanup()
        if settings.database_url:
            await drop_database(settings.database_url)
