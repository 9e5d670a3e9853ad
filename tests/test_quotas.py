"""Daily quotas and rate limits: exact counts under concurrency (in memory, in Redis, and across two real gateway
processes sharing Redis and PostgreSQL), 429 with Retry-After, and revocation and expiry on the next call."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from gateway.access import grants as grant_rows
from gateway.access.directory import GrantInfo
from gateway.access.quotas import LoopMemoryStorage, QuotaExceeded, Quotas
from gateway.settings import load_settings
from gateway.storage import db
from gateway.storage.models import AuditRecord
from gateway.storage.redis import SharedRedis
from schemas.api import GrantIn
from simulators.enterprises import DEMO_USCC
from tests.helpers.calls import assert_problem
from tests.helpers.clock import ManualClock
from tests.helpers.gateways import PURPOSE, Identity, RunningGateway, make_gateway, new_identity
from tests.helpers.processes import CLI, stop
from tests.helpers.quotas import admin_grant, call_for_purpose, grant_info
from tests.helpers.services import check_redis, create_test_database, drop_database, free_port

INVOKE = "/v1/services/credit/dishonest-debtor"


@pytest.fixture(params=["memory", "redis"])
async def quotas(request: pytest.FixtureRequest) -> AsyncIterator[Quotas]:
    redis = SharedRedis(await check_redis(), "msjx") if request.param == "redis" else None
    store = Quotas.build(redis)
    yield store
    await store.close()
    if redis is not None:
        await redis.close()


async def _outcomes(quotas: Quotas, grant: GrantInfo, calls: int) -> list[str | QuotaExceeded]:
    async def one() -> str | QuotaExceeded:
        try:
            await quotas.check(grant)
        except QuotaExceeded as exc:
            return exc
        return "ok"

    return await asyncio.gather(*[one() for _ in range(calls)])


async def test_daily_quota_is_exact_under_concurrency(quotas: Quotas) -> None:
    grant = grant_info(daily_quota=17)
    outcomes = await _outcomes(quotas, grant, 60)
    assert outcomes.count("ok") == 17
    refusals = [outcome for outcome in outcomes if outcome != "ok"]
    assert len(refusals) == 43
    assert all(isinstance(r, QuotaExceeded) and r.code == "quota_exhausted" for r in refusals)
    # Retry-After points at midnight Beijing time.
    assert all(0 < r.retry_after <= 86_400 for r in refusals if isinstance(r, QuotaExceeded))
    assert await quotas.used_today(grant) == 17


async def test_rate_limit_refuses_without_spending_the_quota(quotas: Quotas) -> None:
    grant = grant_info(daily_quota=100, rate_limit="3/minute")
    outcomes = await _outcomes(quotas, grant, 10)
    assert outcomes.count("ok") == 3
    refused = [outcome for outcome in outcomes if isinstance(outcome, QuotaExceeded)]
    assert {r.code for r in refused} == {"rate_limited"}
    assert all(1 <= r.retry_after <= 60 for r in refused)
    assert refused[0].headers["Retry-After"] == str(refused[0].retry_after)
    assert await quotas.used_today(grant) == 3, "only the calls that passed the rate limit count against the quota"


async def test_a_day_quota_under_a_loose_rate_limit_is_exact(quotas: Quotas) -> None:
    grant = grant_info(daily_quota=5, rate_limit="1000/minute")
    outcomes = await _outcomes(quotas, grant, 20)
    assert outcomes.count("ok") == 5
    assert {r.code for r in outcomes if isinstance(r, QuotaExceeded)} == {"quota_exhausted"}
    assert await quotas.used_today(grant) == 5


async def test_grants_of_one_request_share_their_quota(quotas: Quotas) -> None:
    first, second = grant_info(daily_quota=4), grant_info(daily_quota=4)
    shared = {"sharing_request_id": "sr-" + secrets.token_hex(8)}
    first, second = (GrantInfo(**{**grant.__dict__, **shared}) for grant in (first, second))
    assert (await _outcomes(quotas, first, 3)).count("ok") == 3
    assert (await _outcomes(quotas, second, 3)).count("ok") == 1


async def test_a_grant_without_limits_is_not_counted(quotas: Quotas) -> None:
    assert (await _outcomes(quotas, grant_info(), 50)).count("ok") == 50


async def test_in_memory_windows_reset_and_expired_counters_are_swept() -> None:
    store = LoopMemoryStorage()
    quotas = Quotas(store, "memory")
    grant = grant_info(rate_limit="2/second")
    assert (await _outcomes(quotas, grant, 3)).count("ok") == 2
    await asyncio.sleep(1.1)  # past the one-second window, and past the next sweep
    assert (await _outcomes(quotas, grant, 3)).count("ok") == 2, "a new window counts from zero"
    stale = grant_info(rate_limit="5/second")
    await _outcomes(quotas, stale, 1)
    assert any(stale.quota_scope in key for key in store.storage)
    await asyncio.sleep(1.1)
    await _outcomes(quotas, grant, 1)  # any count sweeps what expired
    assert not any(stale.quota_scope in key for key in store.storage)
    assert not any(stale.quota_scope in key for key in store.expirations)


async def test_in_memory_both_windows_counted_together_keep_their_own_expiry() -> None:
    quotas = Quotas(LoopMemoryStorage(), "memory")
    grant = grant_info(rate_limit="2/second", daily_quota=100)
    assert (await _outcomes(quotas, grant, 3)).count("ok") == 2
    await asyncio.sleep(1.1)  # the rate window is new, the day window is not
    assert (await _outcomes(quotas, grant, 3)).count("ok") == 2
    assert await quotas.used_today(grant) == 4, "the two refused calls were not counted against the day"


async def test_redis_down_fails_closed() -> None:
    redis = SharedRedis("redis://127.0.0.1:1/0", "msjx")
    store = Quotas.build(redis)
    try:
        with pytest.raises(Exception) as info:
            await store.check(grant_info(daily_quota=5))
        assert getattr(info.value, "code", None) == "quota_store_unavailable"
        assert info.value.status == 503  # type: ignore[attr-defined]
    finally:
        await redis.close()


async def test_quota_and_rate_limit_on_the_invoke_path(gateway: RunningGateway) -> None:
    grant = await admin_grant(gateway, daily_quota=2, purpose="QUOTA-1")
    assert grant["daily_quota"] == 2 and grant["department"] == "市数据管理局"
    assert [(await call_for_purpose(gateway, "QUOTA-1")).status_code for _ in range(2)] == [200, 200]
    refused = await call_for_purpose(gateway, "QUOTA-1")
    assert_problem(refused, 429, "quota_exhausted")
    assert 0 < int(refused.headers["retry-after"]) <= 86_400
    async with gateway.runtime.engine.connect() as connection:
        record = (
            await connection.execute(select(AuditRecord.__table__).order_by(AuditRecord.ts_ms.desc()).limit(1))
        ).first()
    assert record is not None
    assert (record.decision, record.reason_code, record.grant_id) == ("refused", "quota_exhausted", grant["grant_id"])
    async with gateway.client(gateway.admin) as admin:
        seen = await admin.get(f"/v1/grants/{grant['grant_id']}")
    assert seen.json()["used_today"] == 2

    limited = await admin_grant(gateway, rate_limit="1/minute", purpose="RATE-1")
    assert (await call_for_purpose(gateway, "RATE-1")).status_code == 200
    second = await call_for_purpose(gateway, "RATE-1")
    assert_problem(second, 429, "rate_limited")
    assert 1 <= int(second.headers["retry-after"]) <= 60
    assert limited["rate_limit"] == "1/minute"


async def test_grant_terms_are_checked(gateway: RunningGateway) -> None:
    for terms, code in [
        ({"daily_quota": 0}, "quota_invalid"),
        ({"daily_quota": -5}, "quota_invalid"),
        ({"rate_limit": "fast"}, "rate_limit_invalid"),
        ({"department": "市财政局"}, "department_mismatch"),
        ({"valid_to": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}, "validity_in_past"),
    ]:
        body = {
            "caller_id": "platform",
            "service": "credit",
            "operation": "dishonest-debtor",
            "purpose": "BAD-1",
            "fields": ["listed"],
            "valid_to": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            **terms,
        }
        async with gateway.client(gateway.admin) as admin:
            assert_problem(await admin.post("/v1/grants", json=body), 422, code)
    async with gateway.client(gateway.admin) as admin:
        assert [grant["purpose"] for grant in (await admin.get("/v1/grants")).json()] == [PURPOSE, "QZ-2025-007"]


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def clocked(
    request: pytest.FixtureRequest, tmp_path: Path, credit_url: str
) -> AsyncIterator[tuple[RunningGateway, ManualClock]]:
    """A gateway whose wall time the test moves."""
    clock = ManualClock(datetime.now(UTC))
    async with make_gateway(
        request.param, clock=clock, data_dir=tmp_path, upstream_urls={"credit": credit_url}
    ) as running:
        yield running, clock


async def test_expiry_holds_on_the_next_call(clocked: tuple[RunningGateway, ManualClock]) -> None:
    gateway, clock = clocked
    ends = clock.now() + timedelta(seconds=1.5)
    await admin_grant(gateway, purpose="SHORT-1", valid_to=ends.isoformat())
    assert (await call_for_purpose(gateway, "SHORT-1")).status_code == 200
    clock.advance(seconds=1.6)
    response = await call_for_purpose(gateway, "SHORT-1")
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "grant_expired", response.text


# --- two real gateway processes sharing Redis and PostgreSQL ---------------------------------------------------


async def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"gateway exited early: {log.read_text()[-2000:]}")
            try:
                if (await client.get(url + "/readyz", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"gateway at {url} never became ready: {log.read_text()[-2000:]}")


def _start_node(node_id: str, data_dir: Path, port: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = data_dir / f"{node_id}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [CLI, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env={**env, "MSJX_NODE_ID": node_id, "MSJX_DATA_DIR": str(data_dir)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return process, log


@pytest.mark.slow
async def test_two_processes_share_an_exact_quota_and_see_revocation_within_a_second(
    tmp_path: Path, credit_url: str
) -> None:
    redis_url = await check_redis()
    database_url = await create_test_database()
    quota, calls = 15, 40
    try:
        settings = load_settings(database_url=database_url, data_dir=tmp_path / "seed")
        engine = db.create_engine(settings)
        async with db.sessionmaker(engine)() as session:
            platform: Identity = await new_identity(session, "platform", ["platform"], "市数据管理局")
            admin: Identity = await new_identity(session, "admin", ["admin"], "市大数据中心")
            grant = await grant_rows.add_grant(
                session,
                GrantIn(
                    caller_id="platform",
                    service="credit",
                    operation="dishonest-debtor",
                    purpose="TWO-NODES",
                    fields=["listed"],
                    valid_to=datetime.now(UTC) + timedelta(days=1),
                    daily_quota=quota,
                ),
                {"credit": _credit_adapter_for_validation()},
            )
        env = {key: value for key, value in os.environ.items() if not key.startswith("MSJX_")}
        env.update(
            {
                "MSJX_DATABASE_URL": database_url,
                "MSJX_REDIS_URL": redis_url,
                "MSJX_UPSTREAM_URLS": json.dumps({"credit": credit_url}),
                "MSJX_LOG_LEVEL": "warning",
                # Nodes sharing a database share the master key that wraps the audit data keys.
                "MSJX_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            }
        )
        ports = [free_port(), free_port()]
        nodes = [
            _start_node(f"node-{name}-{secrets.token_hex(3)}", tmp_path / name, port, env)
            for name, port in zip(("a", "b"), ports, strict=True)
        ]
        try:
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            for url, (process, log) in zip(urls, nodes, strict=True):
                await _wait_ready(url, process, log)
            clients = [httpx.AsyncClient(base_url=url, auth=platform.auth(), timeout=30) for url in urls]
            body = {"purpose": "TWO-NODES", "params": {"uscc": DEMO_USCC}}
            responses = await asyncio.gather(*[clients[i % 2].post(INVOKE, json=body) for i in range(calls)])
            statuses = [response.status_code for response in responses]
            assert statuses.count(200) == quota, statuses
            assert statuses.count(429) == calls - quota, statuses
            for response in responses:
                if response.status_code == 429:
                    assert response.json()["code"] == "quota_exhausted"
                    assert int(response.headers["retry-after"]) > 0
            async with engine.connect() as connection:
                allowed = await connection.scalar(
                    select(func.count()).where(
                        AuditRecord.grant_id == grant.grant_id, AuditRecord.decision == "allowed"
                    )
                )
                chains = await connection.scalar(
                    select(func.count(func.distinct(AuditRecord.chain_id))).where(
                        AuditRecord.grant_id == grant.grant_id
                    )
                )
            assert (allowed, chains) == (quota, 2), "both nodes served, and together allowed exactly the quota"

            # Revoke on node A; node B refuses within one second.
            async with httpx.AsyncClient(base_url=urls[0], auth=admin.auth(), timeout=30) as admin_a:
                revoked = await admin_a.post(f"/v1/grants/{grant.grant_id}/revoke", json={"reason": "两节点测试"})
            assert revoked.status_code == 200, revoked.text
            revoked_at = time.monotonic()
            seen: list[tuple[float, int]] = []
            while time.monotonic() - revoked_at < 1.6:
                started = time.monotonic() - revoked_at
                response = await clients[1].post(INVOKE, json=body)
                seen.append((started, response.status_code))
                await asyncio.sleep(0.05)
            late = [status for started, status in seen if started >= 1.0]
            assert late and set(late) == {403}, seen
            first_refusal = min(started for started, status in seen if status == 403)
            assert first_refusal <= 1.0, seen
            for client in clients:
                await client.aclose()
        finally:
            for process, _ in nodes:
                stop(process)
        await engine.dispose()
    finally:
        await drop_database(database_url)


def _credit_adapter_for_validation() -> Any:
    """add_grant checks the operation's fields against an adapter; no connection is opened."""
    from adapters.credit import CreditAdapter

    return CreditAdapter("http://127.0.0.1:1")
