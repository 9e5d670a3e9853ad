"""kill -9 of a gateway in the middle of a batch chunk, on SQLite and on PostgreSQL (where a second node running
`batch-worker` shares the job): after the restart the batch finishes with exactly one result line per subject and
operation, and the audit shows the chunk that ran twice."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from gateway.access import callers
from gateway.access import grants as grant_rows
from gateway.batches.tables import BatchChunk
from gateway.client import SignatureAuth
from gateway.demo.setup import key_id_for
from gateway.runtime import build_adapters
from gateway.settings import Settings, load_settings
from gateway.storage import db
from gateway.storage.models import AuditRecord
from schemas.api import CallerIn, GrantIn, KeyIn
from security.keys import public_key_pem
from tests.helpers.batches import BATCH_PURPOSE, usccs
from tests.helpers.processes import CLI
from tests.helpers.services import check_redis, create_test_database, drop_database, free_port

pytestmark = pytest.mark.slow
SUBJECTS = 120
CHUNK = 15


@dataclass
class Cluster:
    settings: Settings
    env: dict[str, str]
    auth: SignatureAuth
    root: Path


async def seed(settings: Settings) -> SignatureAuth:
    await db.upgrade_async(settings)
    adapters = build_adapters(settings)
    private = Ed25519PrivateKey.generate()
    key_id = key_id_for("platform", private.public_key())
    engine = db.create_engine(settings)
    try:
        async with db.sessionmaker(engine)() as session:
            key = KeyIn(key_id=key_id, public_key=public_key_pem(private.public_key()))
            await callers.add_caller(
                session,
                CallerIn(caller_id="platform", name="p", department="市数据管理局", roles=["platform"], keys=[key]),
            )
            operation = adapters["credit"].operations["dishonest-debtor"]
            grant = GrantIn(
                caller_id="platform",
                service="credit",
                operation="dishonest-debtor",
                purpose=BATCH_PURPOSE,
                fields=list(operation.fields),
                valid_to=datetime.now(UTC) + timedelta(days=1),
                share_methods=["batch"],
            )
            await grant_rows.add_grant(session, grant, adapters)
    finally:
        await engine.dispose()
    return SignatureAuth(key_id, private)


@pytest.fixture(params=["sqlite", "postgres_redis"])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path, credit_url: str) -> AsyncIterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env.update(
        MSJX_UPSTREAM_URLS=json.dumps({"credit": credit_url}),
        MSJX_LOG_LEVEL="warning",
        MSJX_BATCH_CHUNK_SIZE=str(CHUNK),
        MSJX_BATCH_WORKERS="1",
        MSJX_BATCH_STALL_SECONDS="2",
        # Every node of the deployment opens the same key ring.
        MSJX_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    overrides: dict[str, object] = {"data_dir": tmp_path / "node-1", "upstream_urls": {"credit": credit_url}}
    if request.param == "postgres_redis":
        overrides["database_url"] = await create_test_database()
        overrides["redis_url"] = await check_redis()
        env.update(
            MSJX_DATABASE_URL=str(overrides["database_url"]),
            MSJX_REDIS_URL=str(overrides["redis_url"]),
            MSJX_REDIS_PREFIX=f"msjx-batch-{secrets.token_hex(4)}",
        )
    settings = load_settings(master_key=env["MSJX_MASTER_KEY"], **overrides)
    auth = await seed(settings)
    try:
        yield Cluster(settings, env, auth, tmp_path)
    finally:
        if settings.database_url:
            await drop_database(settings.database_url)


async def start_node(cluster: Cluster, name: str, port: int) -> subprocess.Popen[bytes]:
    data_dir = cluster.root / name
    data_dir.mkdir(exist_ok=True)
    env = {**cluster.env, "MSJX_DATA_DIR": str(data_dir), "MSJX_NODE_ID": name}
    process = subprocess.Popen([CLI, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=1)).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError(f"{name} never became ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


async def chunk_rows(settings: Settings, batch_id: str) -> list[tuple]:
    engine = db.create_engine(settings)
    try:
        async with engine.connect() as connection:
            query = select(
                BatchChunk.chunk_no, BatchChunk.state, BatchChunk.attempts, BatchChunk.done_by, BatchChunk.done_at
            ).where(BatchChunk.batch_id == batch_id)
            return [tuple(row) for row in (await connection.execute(query)).all()]  # type: ignore[misc]
    finally:
        await engine.dispose()


async def retried_in_audit(settings: Settings, batch_id: str) -> set[str]:
    engine = db.create_engine(settings)
    try:
        async with engine.connect() as connection:
            query = select(AuditRecord.reason).where(
                AuditRecord.event == "batch.subject", AuditRecord.target_id == batch_id
            )
            return {str(row[0]) for row in (await connection.execute(query)).all()}
    finally:
        await engine.dispose()


async def test_kill_9_mid_chunk_loses_nothing_and_counts_nothing_twice(
    cluster: Cluster, credit_url: str, clear_faults: None
) -> None:
    # Slow answers, so that the kill lands while a chunk is being called.
    async with httpx.AsyncClient() as sim:
        await sim.post(f"{credit_url}/_sim/faults", json={"mode": "latency", "latency_ms": 300})
    two_nodes = not cluster.settings.is_sqlite
    ports = {"node-1": free_port()}
    nodes = {"node-1": await start_node(cluster, "node-1", ports["node-1"])}
    url = f"http://127.0.0.1:{ports['node-1']}"
    try:
        async with httpx.AsyncClient(base_url=url, auth=cluster.auth, timeout=30) as client:
            body = {
                "purpose": BATCH_PURPOSE,
                "operations": [{"service": "credit", "operation": "dishonest-debtor"}],
                "subjects": [{"uscc": uscc} for uscc in usccs(SUBJECTS)],
            }
            answer = await client.post("/v1/batches", json=body)
            assert answer.status_code == 202, answer.text
            batch_id = answer.json()["batch_id"]
            # Killed once a chunk is done and another has started (its attempt counted) and not finished.
            while True:
                rows = await chunk_rows(cluster.settings, batch_id)
                done = sum(row[1] == "done" for row in rows)
                if done >= 1 and any(row[1] == "pending" and row[2] >= 1 for row in rows):
                    break
                await asyncio.sleep(0.01)
        nodes["node-1"].send_signal(signal.SIGKILL)
        nodes["node-1"].wait(timeout=10)
        if two_nodes:
            # A second node, running chunks only (`msjx-gateway batch-worker`), shares what is left. It starts after
            # the kill, so that the kill surely finds node-1 inside a chunk, the only worker then.
            data_dir = cluster.root / "node-2"
            data_dir.mkdir(exist_ok=True)
            env = {**cluster.env, "MSJX_DATA_DIR": str(data_dir), "MSJX_NODE_ID": "node-2"}
            nodes["node-2"] = subprocess.Popen([CLI, "batch-worker"], env=env, stdout=subprocess.DEVNULL)
        nodes["node-1"] = await start_node(cluster, "node-1", ports["node-1"])
        async with httpx.AsyncClient(base_url=url, auth=cluster.auth, timeout=30) as client:
            for _ in range(600):
                status = (await client.get(f"/v1/batches/{batch_id}")).json()
                if status["state"] == "done":
                    break
                await asyncio.sleep(0.1)
            assert status["state"] == "done", status
            results = await client.get(f"/v1/batches/{batch_id}/results")
    finally:
        for process in nodes.values():
            stop(process)
    lines = [orjson.loads(line) for line in results.content.splitlines()]
    assert [line["line"] for line in lines] == list(range(1, SUBJECTS + 1))
    assert [line["uscc"] for line in lines] == usccs(SUBJECTS)
    chunks = await chunk_rows(cluster.settings, batch_id)
    assert all(row[1] == "done" for row in chunks)
    retried = [row[0] for row in chunks if row[2] > 1]
    assert retried, f"the kill did not land in a chunk: {chunks}"
    reasons = await retried_in_audit(cluster.settings, batch_id)
    assert any(f"chunk {number} attempt 2" in reason for number in retried for reason in reasons)
    if two_nodes:
        assert {row[3] for row in chunks} == {"node-1", "node-2"}
