"""kill -9 of a gateway process under load, twice, on SQLite and on PostgreSQL + Redis (instances of the test's own):
every call the gateway acknowledged has its audit record, and the chain verifies after the restarts.

The audit record is durable before the answer leaves (DESIGN.md, step 6), so a 200 the client saw is a record the
database holds, whatever happens to the process a microsecond later. Calls cut off by the kill may or may not be
recorded; they were never acknowledged. Figures go to the JUnit XML as properties (scripts/reliability.py reads them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.audit.verify import verify_all
from gateway.client import SignatureAuth
from gateway.settings import load_settings
from gateway.storage import db
from tests.helpers.deployment import Deployment, recorded, seed, start_gateway
from tests.helpers.gateways import PURPOSE
from tests.helpers.own_services import own_postgres, own_redis
from tests.helpers.services import free_port

pytestmark = pytest.mark.slow
INVOKE = "/v1/services/credit/dishonest-debtor"
USCC = "91110000600037341L"
KILLS = 2  # per backend: the second kill hits a gateway that recovered from the first
ACKS_BEFORE_KILL = 200  # acknowledged calls per run before the kill, with CONCURRENCY more in flight
CONCURRENCY = 16


@contextlib.asynccontextmanager
async def backend(name: str, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    if name == "sqlite":
        yield {}
        return
    with own_postgres() as database_url, own_redis() as redis_url:
        yield {"database_url": database_url, "redis_url": redis_url}


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def deployment(request: pytest.FixtureRequest, tmp_path: Path, credit_url: str) -> AsyncIterator[Deployment]:
    async with backend(request.param, tmp_path) as services:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
        env.update(
            MSJX_DATA_DIR=str(tmp_path),
            MSJX_UPSTREAM_URLS=json.dumps({"credit": credit_url}),
            MSJX_LOG_LEVEL="warning",
            **{f"MSJX_{name.upper()}": value for name, value in services.items()},
        )
        settings = load_settings(data_dir=tmp_path, upstream_urls={"credit": credit_url}, **services)
        private, key_id = await seed(settings, "credit")
        yield Deployment(settings, env, private, key_id)


async def load_until_killed(url: str, auth: SignatureAuth, kill: Callable[[], None]) -> tuple[list[str], int]:
    """Signed calls from CONCURRENCY clients; the kill comes once ACKS_BEFORE_KILL were acknowledged.
    Returns the request ids of every acknowledged call, and how many calls the kill cut off."""
    acknowledged: list[str] = []
    cut_off = 0
    killed = asyncio.Event()
    body = orjson.dumps({"purpose": PURPOSE, "params": {"uscc": USCC}})

    async def client() -> None:
        nonlocal cut_off
        async with httpx.AsyncClient(base_url=url, auth=auth, timeout=30) as http:
            while True:
                try:
                    answer = await http.post(INVOKE, content=body, headers={"content-type": "application/json"})
                except httpx.TransportError:
                    assert killed.is_set(), "the gateway failed before it was killed"
                    cut_off += 1
                    return
                assert answer.status_code == 200, answer.text
                acknowledged.append(answer.headers["x-request-id"])
                if len(acknowledged) >= ACKS_BEFORE_KILL and not killed.is_set():
                    killed.set()
                    kill()

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return acknowledged, cut_off


async def test_kill_9_under_load_loses_no_acknowledged_call(
    deployment: Deployment, record_property: Callable[[str, Any], None]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = SignatureAuth(deployment.key_id, deployment.key)
    acknowledged: list[str] = []
    cut_off = 0
    for _ in range(KILLS):
        gateway = await start_gateway(deployment, port)
        try:
            acks, cut = await load_until_killed(url, auth, lambda process=gateway: process.send_signal(signal.SIGKILL))
            assert gateway.wait(timeout=20) == -signal.SIGKILL
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait()
        acknowledged += acks
        cut_off += cut

    # A last start proves recovery; then the chain is verified with the gateway stopped.
    gateway = await start_gateway(deployment, port)
    gateway.send_signal(signal.SIGINT)
    gateway.wait(timeout=20)
    found = await recorded(deployment.settings, acknowledged)
    lost = [request_id for request_id in acknowledged if request_id not in found]
    wrong = {rid: found[rid] for rid in acknowledged if rid in found and found[rid] != ("allowed", 200)}
    engine = db.create_engine(deployment.settings)
    try:
        reports = await verify_all(engine)
    finally:
        await engine.dispose()

    backend_name = "sqlite" if deployment.settings.is_sqlite else "postgres_redis"
    record_property("fault", f"kill -9 under load ({backend_name})")
    record_property("kills", KILLS)
    record_property("acknowledged", len(acknowledged))
    record_property("cut_off", cut_off)
    record_property("lost", len(lost))
    assert len(acknowledged) >= KILLS * ACKS_BEFORE_KILL
    assert not lost, f"{len(lost)} acknowledged calls have no audit record, e.g. {lost[:5]}"
    assert not wrong, wrong
    assert reports and all(report.ok for report in reports), [report.fault for report in reports]


def test_request_ids_are_unique_per_call() -> None:
    """The check above matches acknowledgements to records by request id: it is only sound if ids never repeat."""
    from gateway.audit.writer import new_request_id

    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 for i in ids)
