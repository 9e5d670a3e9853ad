"""`serve --workers 2` on PostgreSQL + Redis: both workers' chains get records, a worker killed with -9 comes back,
a rolling restart (SIGHUP) and a SIGTERM lose no acknowledged call, and both chains verify; SQLite refuses."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from gateway.client import SignatureAuth
from gateway.settings import Settings, load_settings
from gateway.storage import db
from gateway.storage.models import AuditCheckpoint, AuditRecord
from tests.helpers.audit import USCC
from tests.helpers.calls import INVOKE
from tests.helpers.deployment import recorded, seed
from tests.helpers.gateways import PURPOSE
from tests.helpers.processes import CLI
from tests.helpers.services import check_redis, free_port

pytestmark = pytest.mark.slow
CONCURRENCY = 8


class Served:
    """A `serve --workers 2` subprocess and its log."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as stream:
            self.process = subprocess.Popen(
                [CLI, "serve", "--workers", "2", "--port", str(port)], env=env, stdout=stream, stderr=stream
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, line: str, occurrences: int = 1, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(line) < occurrences:
            assert self.process.poll() is None, f"serve exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"never logged {line!r}:\n{self.text()}"
            await asyncio.sleep(0.2)


@pytest.fixture
async def deployment(tmp_path: Path, postgres_url: str, credit_url: str) -> AsyncIterator[tuple[Settings, dict]]:
    redis_url = await check_redis()
    prefix = f"msjx-test-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env.update(
        MSJX_DATA_DIR=str(tmp_path),
        MSJX_DATABASE_URL=postgres_url,
        MSJX_REDIS_URL=redis_url,
        MSJX_REDIS_PREFIX=prefix,
        MSJX_UPSTREAM_URLS=json.dumps({"credit": credit_url}),
        MSJX_LOG_LEVEL="info",
    )
    settings = load_settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        redis_url=redis_url,
        redis_prefix=prefix,
        upstream_urls={"credit": credit_url},
    )
    yield settings, env


async def drive(url: str, auth: SignatureAuth, calls: int) -> tuple[list[str], int]:
    """`calls` signed calls from CONCURRENCY clients, a new connection each (so the kernel spreads them over the
    workers). Returns the request ids acknowledged, and how many calls got no answer."""
    acknowledged: list[str] = []
    unanswered = 0
    body = orjson.dumps({"purpose": PURPOSE, "params": {"uscc": USCC}})
    remaining = iter(range(calls))

    async def client() -> None:
        nonlocal unanswered
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, auth=auth, timeout=30, limits=limits) as http:
            for _ in remaining:
                try:
                    answer = await http.post(INVOKE, content=body, headers={"content-type": "application/json"})
                except httpx.TransportError:
                    unanswered += 1
                    continue
                assert answer.status_code == 200, answer.text
                acknowledged.append(answer.headers["x-request-id"])

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return acknowledged, unanswered


async def allowed_counts(url: str, scrapes: int) -> set[int]:
    """`msjx_exchanges_total` of allowed calls, as each of `scrapes` scrapes (a new connection each) reports it."""
    counts = set()
    for _ in range(scrapes):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            text = (await http.get("/metrics")).text
        counts.add(
            round(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("msjx_exchanges_total{") and 'decision="allowed"' in line
                )
            )
        )
    return counts


async def chains(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """Per chain: the head height of its records, and the height of its last checkpoint."""
    engine = db.create_engine(settings)
    records, checkpoints = AuditRecord.__table__, AuditCheckpoint.__table__
    try:
        async with engine.connect() as connection:
            heads = await connection.execute(
                select(records.c.chain_id, func.max(records.c.height)).group_by(records.c.chain_id)
            )
            sealed = await connection.execute(
                select(checkpoints.c.chain_id, func.max(checkpoints.c.height)).group_by(checkpoints.c.chain_id)
            )
            return {row[0]: int(row[1]) for row in heads}, {row[0]: int(row[1]) for row in sealed}
    finally:
        await engine.dispose()


async def test_two_workers_share_the_port_keep_every_acknowledged_call_and_verify(
    deployment: tuple[Settings, dict], tmp_path: Path
) -> None:
    settings, env = deployment
    private, key_id = await seed(settings, "credit")
    auth = SignatureAuth(key_id, private)
    served = Served(env, free_port(), tmp_path / "serve.log")
    try:
        await served.wait_for("2 workers ready: node-1-0, node-1-1, serving")
        acknowledged, unanswered = await drive(served.url, auth, 300)
        assert unanswered == 0
        heads, _ = await chains(settings)
        assert heads.get("node-1-0", 0) > 0 and heads.get("node-1-1", 0) > 0, heads
        # Whichever worker answers a scrape, it reports both workers' totals.
        assert await allowed_counts(served.url, scrapes=6) == {300}

        # A worker killed with -9 is restarted on its own chain; calls go on meanwhile on the other one.
        pids = [int(pid) for pid in subprocess.check_output(["pgrep", "-P", str(served.process.pid)]).split()]
        workers = [pid for pid in pids if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2, pids
        os.kill(workers[0], signal.SIGKILL)
        acks, cut = await drive(served.url, auth, 100)  # a call cut off by the kill had no answer: it may be lost
        acknowledged += acks
        await served.wait_for("exited with code -9")
        await served.wait_for("ready (PostgreSQL)", occurrences=3)
        # The dead worker's counts stay in the totals: nothing acknowledged goes uncounted (a call the kill cut off
        # may have been counted before its answer was lost).
        (total,) = await allowed_counts(served.url, scrapes=6)
        assert len(acknowledged) <= total <= len(acknowledged) + cut

        # A rolling restart under load: every call answered, every answer recorded.
        load = asyncio.create_task(drive(served.url, auth, 400))
        await asyncio.sleep(0.5)
        served.process.send_signal(signal.SIGHUP)
        await served.wait_for("rolling restart done")
        acks, unanswered = await load
        acknowledged += acks
        assert unanswered == 0, served.text()
        assert served.text().count("ready (PostgreSQL)") >= 5

        # SIGTERM drains both workers while calls are in flight, in the middle of a second rolling restart; each
        # worker signs its chain's head, and the restart cut short is not reported as a failure.
        load = asyncio.create_task(drive(served.url, auth, 200))
        await asyncio.sleep(0.3)
        served.process.send_signal(signal.SIGHUP)
        await served.wait_for("rolling restart of 2 workers", occurrences=2)
        served.process.send_signal(signal.SIGTERM)
        acks, _ = await load
        acknowledged += acks
        assert served.process.wait(timeout=60) == 0, served.text()
        assert "did not come back ready" not in served.text()
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()

    found = await recorded(settings, acknowledged)
    lost = [request_id for request_id in acknowledged if request_id not in found]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged calls have no audit record"
    heads, sealed = await chains(settings)
    assert sorted(heads) == ["node-1-0", "node-1-1"], heads
    assert sealed == heads, "each worker's last checkpoint signs its chain's head"
    verify = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "node-1-0" in verify.stdout and "node-1-1" in verify.stdout, verify.stdout
    assert "Traceback" not in served.text()


def test_sqlite_refuses_more_than_one_worker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env["MSJX_DATA_DIR"] = str(tmp_path)
    command = [CLI, "serve", "--workers", "2", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--workers 2 needs PostgreSQL" in lines[0] and "SQLite" in lines[0] and "one process" in lines[0]
    assert not (tmp_path / "msjx.db").exists(), "it refused before touching the database"


def test_more_than_one_worker_needs_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env.update(MSJX_DATA_DIR=str(tmp_path), MSJX_DATABASE_URL="postgresql://msjx@127.0.0.1:5432/unused")
    command = [CLI, "serve", "--workers", "3", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --workers 3 needs Redis (MSJX_REDIS_URL): without it nonces, quotas and breakers are kept in each"
        " process, so a replayed request or an exhausted quota would pass on another worker"
    ]


def test_the_port_is_refused_until_the_server_listens() -> None:
    """serve binds its port before the migrations (a port in use is one line at once), but nginx and TCP health
    checks take an open port for a server that is up: connections are refused until `listen`."""
    from gateway.server.workers import bind, listen

    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        listen(sock)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        sock.close()
