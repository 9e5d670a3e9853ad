"""Audit log speed: durable append with group commit (SQLite and PostgreSQL, both suites) and verification on one core.

Run `.venv/bin/python -m bench.audit` (about 2 minutes; `--quick` about 30 s). Each append run drives the real
`AuditWriter` (payloads sealed, subject and body digests keyed, chain hashed, batch committed durably: SQLite
in WAL with synchronous=FULL, PostgreSQL with synchronous_commit on; checkpoints signed every 1,000 records)
from 512 concurrent tasks in one process, and counts records whose commit was confirmed: `append_*_rps` is
records per wall-clock second, `append_*_cpu_rps` records per CPU-second this process used (all its threads,
and on SQLite its committer process; PostgreSQL's own work is not in it), which is what one core would do on a
machine nobody else is using;
`append_ceiling_*_cpu_rps` is the writer's entries and the committer's sealing, digests and hashing alone, in this
process, with no database and no pipe: the most one Python process could append whatever the database.
Verification rates are the chain walk over rows already in memory (hashing every record and ciphertext), per
CPU-second on one core, best of three runs; the `verify_db_*` rates add reading the rows from the database (wall clock).
Results go to bench/results/audit.json.
`run(quick)` returns the same flat figures for `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "audit.json"
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")
CONCURRENCY = 512
SUITES = ("standard", "sm")
USCC = "91350200MA2Y0000XX"
REQUEST = orjson.dumps({"purpose": "XM-2025-001", "params": {"uscc": "91110000600037341L"}})
RESPONSE = orjson.dumps(
    {
        "data": {
            "uscc": "91110000600037341L",
            "listed": True,
            "cases": [{"case_no": "(2024)闽0203执1234号", "court": "厦门市思明区人民法院", "amount": "125000.00"}],
        },
        "meta": {
            "request_id": "0" * 32,
            "service": "credit",
            "operation": "dishonest-debtor",
            "grant_id": "g" * 16,
            "source": "信用平台",
            "fetched_at": "2026-11-23T08:00:00.000+00:00",
        },
    }
)


def _event(index: int) -> Any:
    from gateway.audit.writer import AuditEvent

    return AuditEvent(
        event="service.invoke",
        request_id=secrets.token_hex(16),
        decision="allowed",
        status_code=200,
        request_body=REQUEST,
        response_body=RESPONSE,
        caller_id="platform",
        department="市数据管理局",
        roles=("platform",),
        key_id="platform.0123456789ab",
        client_addr="127.0.0.1",
        method="POST",
        path="/v1/services/credit/dishonest-debtor",
        service="credit",
        operation="dishonest-debtor",
        purpose="XM-2025-001",
        grant_id="g" * 16,
        subject=USCC,
        fields=("uscc", "listed", "cases"),
        upstream_status="200",
        duration_us=1500 + index % 100,
        upstream_us=900,
    )


async def _writer(settings: Any, suite: str, chain: str = "bench") -> tuple[Any, Any]:
    from gateway.audit.keys import open_keyring
    from gateway.audit.writer import AuditWriter
    from gateway.storage import db
    from security.keys import ED25519, SM2_SM3, generate

    engine = db.create_engine(settings)
    keyring = await open_keyring(settings, engine)
    writer = AuditWriter(
        engine,
        chain_id=f"{chain}-{suite}",
        keyring=keyring,
        suite=suite,
        signer=generate(SM2_SM3 if suite == "sm" else ED25519),  # as a node of that suite signs its checkpoints
        checkpoint_every=1000,
        checkpoint_seconds=10.0,
        batch_max=settings.audit_batch_max,
    )
    await writer.start()
    return engine, writer


async def _append(settings: Any, suite: str, records: int) -> dict[str, float]:
    engine, writer = await _writer(settings, suite)
    try:
        await _drive(writer, 2000)  # warm-up: connections, caches, first pages
        batches_before = writer.batches
        started, cpu_started = time.perf_counter(), _cpu_seconds(writer)
        await _drive(writer, records)
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds(writer) - cpu_started
        return {
            "rps": records / elapsed,
            "cpu_rps": records / cpu,
            "batch": records / max(writer.batches - batches_before, 1),
        }
    finally:
        await writer.close()
        await engine.dispose()


def _cpu_seconds(writer: Any) -> float:
    """This process's CPU time and, on SQLite, its committer process's (which seals, chains, inserts and commits)."""
    from bench.procs import cpu_seconds

    committer = getattr(writer._committer, "pid", None)
    return time.process_time() + (sum(cpu_seconds([committer])) if committer is not None else 0.0)


async def _ceiling(settings: Any, suite: str, records: int) -> float:
    """Records per CPU-second of the writer's entries and the committer's sealing, digests and hashing alone, with no
    database and no pipe: the most one Python process could append, whatever the database."""
    from gateway.audit.sealing import RowSealer
    from gateway.audit.writer import STRING_LIMITS
    from gateway.storage.models import AUDIT_COLUMNS
    from security.audit_chain import GENESIS_HASH

    engine, writer = await _writer(settings, suite, chain="ceiling")
    try:
        sealer = RowSealer(suite, "ceiling", STRING_LIMITS, AUDIT_COLUMNS)
        data_key = writer.keyring.current(suite)
        keys = (data_key.key_id, data_key.secret, writer.keyring.index_key)
        events = [_event(index) for index in range(records)]
        height, head = 0, GENESIS_HASH
        started = time.process_time()
        for start in range(0, records, 512):
            _, hashes = sealer.chain([writer.entry(event) for event in events[start : start + 512]], keys, height, head)
            height, head = height + len(hashes), hashes[-1]
        return records / (time.process_time() - started)
    finally:
        await writer.close()
        await engine.dispose()


async def _drive(writer: Any, records: int) -> None:
    per_task = records // CONCURRENCY
    extra = records - per_task * CONCURRENCY

    async def producer(count: int) -> None:
        for index in range(count):
            await writer.append(_event(index))

    await asyncio.gather(*(producer(per_task + (1 if n < extra else 0)) for n in range(CONCURRENCY)))


async def _verify(settings: Any, suite: str) -> dict[str, float]:
    """Chain walk over the rows the append run wrote: in memory (one core), and straight from the database."""
    from gateway.audit.rows import iter_chain
    from gateway.audit.verify import verify_all
    from gateway.storage import db
    from security.audit_chain import ChainVerifier

    engine = db.create_engine(settings)
    try:
        chain = f"bench-{suite}"
        rows = [row async for page in iter_chain(engine, chain) for row in page]
        best = float("inf")
        for _ in range(3):  # best of three: the walk is CPU-bound, so the fastest run is the least disturbed one
            borrowed = [dict(row) for row in rows]
            started = time.process_time()
            verifier = ChainVerifier(chain, presorted=True)  # rows as the database reader builds them
            verifier.feed(borrowed)
            report = verifier.finish()
            best = min(best, time.process_time() - started)
            assert report.ok, str(report.fault)
        cpu = best
        started_wall = time.perf_counter()
        reports = await verify_all(engine, chains=[chain])
        wall = time.perf_counter() - started_wall
        assert reports[0].ok, str(reports[0].fault)
        return {"rps": len(rows) / cpu, "db_rps": len(rows) / wall, "records": len(rows)}
    finally:
        await engine.dispose()


async def _postgres_database() -> str | None:
    import asyncpg

    name = f"msjx_bench_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(DATABASE_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path=f"/{name}"))


async def _drop(url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(DATABASE_URL, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await admin.close()


async def _run(quick: bool) -> dict[str, Any]:
    from gateway.settings import load_settings
    from gateway.storage import db

    records = 10_000 if quick else 60_000
    figures: dict[str, Any] = {
        "records_per_run": records,
        "concurrency": CONCURRENCY,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="msjx-bench-audit-") as tmp:
        sqlite = load_settings(data_dir=Path(tmp) / "sqlite")
        await db.upgrade_async(sqlite)
        for suite in SUITES:
            result = await _append(sqlite, suite, records)
            figures[f"append_sqlite_{suite}_rps"] = round(result["rps"])
            figures[f"append_sqlite_{suite}_cpu_rps"] = round(result["cpu_rps"])
            figures[f"append_sqlite_{suite}_batch"] = round(result["batch"], 1)
            figures[f"append_ceiling_{suite}_cpu_rps"] = round(await _ceiling(sqlite, suite, records))
            verified = await _verify(sqlite, suite)
            figures[f"verify_{suite}_rps"] = round(verified["rps"])
            figures[f"verify_db_sqlite_{suite}_rps"] = round(verified["db_rps"])
        url = await _postgres_database()
        if url is None:
            figures["postgres"] = f"not reachable at {DATABASE_URL}: PostgreSQL figures missing"
        else:
            try:
                postgres = load_settings(data_dir=Path(tmp) / "pg", database_url=url)
                await db.upgrade_async(postgres)
                for suite in SUITES:
                    result = await _append(postgres, suite, records)
                    figures[f"append_pg_{suite}_rps"] = round(result["rps"])
                    figures[f"append_pg_{suite}_cpu_rps"] = round(result["cpu_rps"])
                    figures[f"append_pg_{suite}_batch"] = round(result["batch"], 1)
                    verified = await _verify(postgres, suite)
                    figures[f"verify_db_pg_{suite}_rps"] = round(verified["db_rps"])
            finally:
                await _drop(url)
    return figures


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and write bench/results/audit.json; returns the flat figures (records per second)."""
    import logging

    logging.getLogger("msjx.keyring").setLevel(logging.ERROR)
    try:
        import uvloop

        figures = uvloop.run(_run(quick))
    except ImportError:
        figures = asyncio.run(_run(quick))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.audit" + (" --quick" if quick else "")
    RESULTS.write_text(json.dumps({"command": command, **figures}, indent=2, ensure_ascii=False) + "\n")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records per run")
    figures = run(parser.parse_args(argv).quick)
    json.dump(figures, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
