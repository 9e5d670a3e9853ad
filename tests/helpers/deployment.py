"""A gateway deployed as a child process beside a treasury simulator, as the crash and kill tests need it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from gateway.access import callers
from gateway.demo.setup import key_id_for
from gateway.runtime import build_adapters
from gateway.settings import Settings
from gateway.storage import db
from gateway.storage.models import AuditRecord
from schemas.api import CallerIn, KeyIn
from security.keys import public_key_pem
from tests.helpers.gateways import grant_every_operation
from tests.helpers.processes import CLI
from tests.helpers.services import free_port

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


async def seed(settings: Settings, service: str = "treasury") -> tuple[Ed25519PrivateKey, str]:
    """Migrate, and register the platform with a new key and a grant for every operation of `service`."""
    await db.upgrade_async(settings)
    adapters = build_adapters(settings)
    private = Ed25519PrivateKey.generate()
    key_id = key_id_for("platform", private.public_key())
    engine = db.create_engine(settings)
    try:
        async with db.sessionmaker(engine)() as session:
            await callers.add_caller(
                session,
                CallerIn(
                    caller_id="platform",
                    name="platform",
                    department="市数据管理局",
                    roles=["platform"],
                    keys=[KeyIn(key_id=key_id, public_key=public_key_pem(private.public_key()))],
                ),
            )
            await grant_every_operation(session, adapters, [service])
    finally:
        await engine.dispose()
    return private, key_id


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


async def recorded(settings: Settings, request_ids: list[str]) -> dict[str, tuple[str, int]]:
    table = AuditRecord.__table__
    engine = db.create_engine(settings)
    found: dict[str, tuple[str, int]] = {}
    try:
        async with engine.connect() as connection:
            for start in range(0, len(request_ids), 500):
                chunk = request_ids[start : start + 500]
                query = select(table.c.request_id, table.c.decision, table.c.status_code).where(
                    table.c.request_id.in_(chunk)
                )
                found.update(
                    {row.request_id: (row.decision, row.status_code) for row in await connection.execute(query)}
                )
    finally:
        await engine.dispose()
    return found
