"""A gateway process SIGKILLed between the treasury's acceptance and the outcome's record, restarted, run again:
exactly one payment per voucher at the treasury. Real processes, real sockets, on SQLite and PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from gateway.audit.verify import verify_all
from gateway.client import SignatureAuth
from gateway.settings import Settings, load_settings
from gateway.storage import db
from gateway.storage.models import PaymentIntent, PaymentOutcome
from tests.helpers.deployment import SUBMIT, Deployment, seed, start_gateway
from tests.helpers.gateways import PURPOSE
from tests.helpers.processes import stop
from tests.helpers.services import check_redis, create_test_database, drop_database, free_port
from tests.helpers.treasury import treasury_listing, voucher

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, treasury_process: str
) -> AsyncIterator[Deployment]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env.update(
        MSJX_DATA_DIR=str(tmp_path),
        MSJX_UPSTREAM_URLS=json.dumps({"treasury": treasury_process}),
        MSJX_UPSTREAM_TIMEOUT="1",
        MSJX_PAYMENT_RECONCILE_SECONDS="3600",  # only the pass at start-up: that is the one under test
        MSJX_LOG_LEVEL="warning",
    )
    overrides: dict[str, Any] = {"data_dir": tmp_path, "upstream_urls": {"treasury": treasury_process}}
    if request.param == "postgres_redis":
        overrides["database_url"] = await create_test_database()
        overrides["redis_url"] = await check_redis()
        env.update(
            MSJX_DATABASE_URL=overrides["database_url"],
            MSJX_REDIS_URL=overrides["redis_url"],
            MSJX_REDIS_PREFIX=f"msjx-crash-{secrets.token_hex(4)}",
        )
    settings = load_settings(**overrides)
    private, key_id = await seed(settings)
    try:
        yield Deployment(settings, env, private, key_id)
    finally:
        if settings.database_url:
            await drop_database(settings.database_url)


async def pay(client: httpx.AsyncClient, body: dict[str, Any], key: str) -> httpx.Response:
    content = orjson.dumps({"purpose": PURPOSE, "params": body})
    headers = {"content-type": "application/json", "Idempotency-Key": f'"{key}"'}
    return await client.post(SUBMIT, content=content, headers=headers)


async def outcomes(settings: Settings) -> dict[str, PaymentOutcome]:
    engine = db.create_engine(settings)
    try:
        async with db.sessionmaker(engine)() as session:
            return {row.voucher_no: row for row in (await session.scalars(select(PaymentOutcome))).all()}
    finally:
        await engine.dispose()


async def intents(settings: Settings) -> dict[str, PaymentIntent]:
    engine = db.create_engine(settings)
    try:
        async with db.sessionmaker(engine)() as session:
            return {row.voucher_no: row for row in (await session.scalars(select(PaymentIntent))).all()}
    finally:
        await engine.dispose()


async def test_sigkill_between_acceptance_and_record_pays_each_voucher_once(
    deployment: Deployment, treasury_process: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bodies = [voucher() for _ in range(3)]
    keys = [f"crash-{secrets.token_hex(6)}" for _ in bodies]
    auth = SignatureAuth(deployment.key_id, deployment.key)

    # Run 1: the hook kills the gateway right after the treasury accepts the second voucher.
    gateway = await start_gateway(deployment, port, MSJX_PAYMENT_FAULT_KILL_AFTER_ACCEPT="2")
    try:
        async with httpx.AsyncClient(base_url=url, auth=auth, timeout=10) as client:
            assert (await pay(client, bodies[0], keys[0])).status_code == 200
            with pytest.raises(httpx.TransportError):
                await pay(client, bodies[1], keys[1])
        assert gateway.wait(timeout=10) == -signal.SIGKILL
        assert gateway.stderr is not None and b"TEST FAULT HOOK" in gateway.stderr.read()
    finally:
        if gateway.poll() is None:
            gateway.kill()

    listing = await treasury_listing(treasury_process)
    assert {v["voucher_no"] for v in listing["vouchers"]} == {bodies[0]["voucher_no"], bodies[1]["voucher_no"]}
    recorded = await outcomes(deployment.settings)
    assert set(recorded) == {bodies[0]["voucher_no"]}, "the kill came before the second outcome was recorded"
    assert bodies[1]["voucher_no"] in await intents(deployment.settings), "but its intent was durable before sending"

    # Run 2: the hook is off. The reconciler's pass at start-up finds the open intent and records its outcome.
    gateway = await start_gateway(deployment, port)
    try:
        deadline = time.monotonic() + 15
        while bodies[1]["voucher_no"] not in (recorded := await outcomes(deployment.settings)):
            assert time.monotonic() < deadline, "the open intent was not reconciled at start-up"
            await asyncio.sleep(0.2)
        reconciled = recorded[bodies[1]["voucher_no"]]
        assert reconciled.resolved_by == "reconciler" and reconciled.outcome == "paid"

        # Run again, every voucher with its own key: two stored answers and one new payment.
        async with httpx.AsyncClient(base_url=url, auth=auth, timeout=10) as client:
            answers = [await pay(client, body, key) for body, key in zip(bodies, keys, strict=True)]
        assert [answer.status_code for answer in answers] == [200, 200, 200]
        assert [answer.headers.get("idempotent-replayed") for answer in answers] == ["true", "true", None]
        assert answers[1].json()["data"]["treasury_serial"] == reconciled.treasury_serial
    finally:
        stop(gateway)

    listing = await treasury_listing(treasury_process)
    assert listing["submissions_per_voucher"] == {body["voucher_no"]: 1 for body in bodies}
    assert listing["accepted"] == 3 and listing["submissions"] == 3
    attempts = {no: intent.attempts for no, intent in (await intents(deployment.settings)).items()}
    assert attempts == {body["voucher_no"]: 1 for body in bodies}, "nothing was sent twice"
    engine = db.create_engine(deployment.settings)
    try:
        reports = await verify_all(engine)
    finally:
        await engine.dispose()
    assert reports and all(report.ok for report in reports), [report.fault for report in reports]
