"""A gateway process SIGKILLed between the treasury's acceptance and the outcome's record, restarted, run again:
exactly one payment per voucher at the treasury. Real processes, real sockets, on SQLite and PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from gateway.access import callers as registry
from gateway.audit.log import verify_all
from gateway.client import SignatureAuth
from gateway.demo.setup import key_id_for
from gateway.runtime import build_adapters
from gateway.settings import Settings, load_settings
from gateway.storage import db
from gateway.storage.models import PaymentIntent, PaymentOutcome
from schemas.api import CallerIn, GrantIn, KeyIn
from security.keys import public_key_pem
from tests.helpers.gateways import PURPOSE
from tests.helpers.services import check_redis, create_test_database, drop_database, free_port
from tests.helpers.treasury import treasury_listing, voucher

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "msjx-gateway")
SUBMIT = "/v1/services/treasury/submit-voucher"


@pytest.fixture
def treasury_process(tmp_path: Path) -> Iterator[str]:
    """The treasury simulator in its own process: it outlives every gateway process of the test."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.treasury", "--port", str(port), "--data-dir", str(tmp_path / "treasury")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert "listening" in process.stdout.readline()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)


@dataclass
class Deployment:
    settings: Settings
    env: dict[str, str]
    key: Ed25519PrivateKey
    key_id: str


async def seed(settings: Settings) -> tuple[Ed25519PrivateKey, str]:
    await db.upgrade_async(settings)
    adapters = build_adapters(settings)
    private = Ed25519PrivateKey.generate()
    key_id = key_id_for("platform", private.public_key())
    engine = db.create_engine(settings)
    try:
        async with db.sessionmaker(engine)() as session:
            await registry.add_caller(
                session,
                CallerIn(
                    caller_id="platform",
                    name="platform",
                    department="市数据管理局",
                    roles=["platform"],
                    keys=[KeyIn(key_id=key_id, public_key=public_key_pem(private.public_key()))],
                ),
            )
            for operation in adapters["treasury"].operations.values():
                await registry.add_grant(
                    session,
                    GrantIn(
                        caller_id="platform",
                        service="treasury",
                        operation=operation.name,
                        purpose=PURPOSE,
                        fields=list(operation.fields),
                        valid_to=datetime.now(UTC) + timedelta(days=1),
                    ),
                    adapters,
                )
    finally:
        await engine.dispose()
    return private, key_id


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


async def start_gateway(deployment: Deployment, port: int, **extra_env: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        env={**deployment.env, **extra_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"gateway exited: {process.stderr.read().decode() if process.stderr else ''}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=1)).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError("gateway never became ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    process.wait(timeout=20)


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
