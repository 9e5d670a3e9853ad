"""The audit log at three years' size on PostgreSQL: seed millions of records through the real writer, then time
what an officer does (subject search, a time range's first page), `audit verify`, and the bytes each record takes.

Run `.venv/bin/python -m bench --only audit_scale` (5,000,000 records; `--quick`: 100,000), or this module alone:
`.venv/bin/python -m bench.audit_scale --records 5000000 [--keep]`. Seeding drives the real `AuditWriter` (payloads
sealed, subject and bodies keyed-hashed, chains hashed, checkpoints signed every 1,000 records, COPY in group
commits) from 512 concurrent tasks per chain, with its clock spread over the last 36 months, so the rows, chains and
checkpoints are the ones a gateway writes, in monthly partitions. The proof that they are: `audit verify` (the same
`verify_all` with the node keys the CLI trusts) must pass on the seeded database, and its rate is a figure here.
With `--keep` the database and data directory stay, and the command to verify them with the CLI is printed.
Results go to bench/results/audit_scale.json (smaller runs: audit_scale_small.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "audit_scale.json"
# Smaller runs (--quick, --records N) go to their own file: a full run's figures are what `make bench` carries.
RESULTS_SMALL = ROOT / "bench" / "results" / "audit_scale_small.json"
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")
FULL, QUICK = 5_000_000, 100_000
CHAINS = 2  # two nodes' chains, interleaved in time as in a two-node deployment
CONCURRENCY = 512
MONTHS = 36
SUBJECTS = 100_000  # enterprises queried; a few are queried very often (see _subject)
CALLERS = 40
SEARCHES = 200
PAGE = 50  # the API's default page
MONTH_MS = 30 * 86_400_000
SERVICES = (
    ("credit", "dishonest-debtor"),
    ("credit", "administrative-penalty"),
    ("tax", "golden-tax-status"),
    ("market", "registration"),
)


def _subject(rng: random.Random) -> str:
    # Cubic skew: the most queried enterprise has ~2% of all records (100,000 of 5 million), half of them have
    # fewer than a dozen. Searching the hot ones is what a plain subject index makes slow.
    return f"91350200MA{int(SUBJECTS * rng.random() ** 3):08d}"


def _event(rng: random.Random) -> Any:
    from gateway.audit.writer import AuditEvent

    subject = _subject(rng)
    service, operation = SERVICES[rng.randrange(len(SERVICES))]
    caller = f"dept-{int(CALLERS * rng.random() ** 2):02d}"
    allowed = rng.random() < 0.95
    request = orjson.dumps({"purpose": "XM-2025-001", "params": {"uscc": subject}})
    response = orjson.dumps(
        {
            "data": {"uscc": subject, "listed": rng.random() < 0.1, "cases": rng.randrange(5)},
            "meta": {"service": service, "operation": operation, "source": "信用平台"},
        }
    )
    return AuditEvent(
        event="service.invoke",
        request_id=secrets.token_hex(16),
        decision="allowed" if allowed else "denied",
        status_code=200 if allowed else 403,
        request_body=request,
        response_body=response if allowed else b"",
        caller_id=caller,
        department="市数据管理局",
        roles=("department",),
        key_id=f"{caller}.0123456789ab",
        client_addr="192.0.2.10",
        method="POST",
        path=f"/v1/services/{service}/{operation}",
        service=service,
        operation=operation,
        purpose="XM-2025-001",
        grant_id="g" * 16,
        subject=subject,
        reason_code=None if allowed else "no_grant",
        fields=("uscc", "listed", "cases") if allowed else (),
        upstream_status="200" if allowed else None,
        duration_us=1500 + rng.randrange(5000),
        upstream_us=900 if allowed else None,
    )


class SpreadClock:
    """The writer's clock (gateway.clock.Clock), moving through the seeded span: each reading (a record, a checkpoint)
    a step later."""

    def __init__(self, start_ms: int, step_ms: float) -> None:
        self.start_ms, self.step_ms, self.calls = start_ms, step_ms, 0

    def ms(self) -> int:
        self.calls += 1
        return self.start_ms + int(self.calls * self.step_ms)

    def time(self) -> float:
        return self.ms() / 1000

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)


async def seed(settings: Any, records: int, *, progress: bool = True) -> dict[str, Any]:
    """`records` records through the real writer, CHAINS chains side by side, spread over the last MONTHS months."""
    from gateway.audit.keys import open_keyring
    from gateway.audit.writer import AuditWriter
    from gateway.storage import db
    from security.keyring import now_ms
    from security.keys import ED25519, generate

    engine = db.create_engine(settings)
    keyring = await open_keyring(settings, engine)
    per_chain = records // CHAINS
    end = now_ms() - 60_000
    span = MONTHS * MONTH_MS
    # Each record takes one clock reading, each checkpoint one more: steps sized so the chain ends about now.
    step = span / (per_chain * 1.001 + 10)
    writers = []
    for index in range(CHAINS):
        clock = SpreadClock(end - span + index * 1000, step)  # the chains' records interleave in time
        writer = AuditWriter(
            engine,
            chain_id=f"node-{index + 1}",
            keyring=keyring,
            signer=generate(ED25519),  # each node its own checkpoint key, registered in the database at start
            checkpoint_every=1000,
            checkpoint_seconds=1e9,  # by count only: the clock is the seeded one, not the wall's
            clock=clock,
            batch_max=settings.audit_batch_max,
        )
        await writer.start()
        writers.append(writer)
    started, cpu_started = time.perf_counter(), time.process_time()
    done = [0]

    async def producer(writer: Any, count: int, seed_value: int) -> None:
        rng = random.Random(seed_value)
        for _ in range(count):
            await writer.append(_event(rng))
            done[0] += 1

    async def report() -> None:
        while True:
            await asyncio.sleep(30)
            elapsed = time.perf_counter() - started
            print(f"  seeded {done[0]:,} of {records:,} ({done[0] / elapsed:,.0f}/s)", file=sys.stderr, flush=True)

    reporter = asyncio.create_task(report()) if progress else None
    try:
        tasks = []
        for number, writer in enumerate(writers):
            per_task, extra = divmod(per_chain, CONCURRENCY)
            for task in range(CONCURRENCY):
                count = per_task + (1 if task < extra else 0)
                tasks.append(producer(writer, count, number * CONCURRENCY + task))
        await asyncio.gather(*tasks)
    finally:
        if reporter is not None:
            reporter.cancel()
        for writer in writers:
            await writer.close()
        await engine.dispose()
    elapsed = time.perf_counter() - started
    return {
        "records": per_chain * CHAINS,
        "chains": CHAINS,
        "months": MONTHS,
        "seed_seconds": round(elapsed, 1),
        "seed_rps": round(per_chain * CHAINS / elapsed),
        "seed_cpu_rps": round(per_chain * CHAINS / (time.process_time() - cpu_started)),
    }


def _p95(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=20)[18] if len(samples) >= 20 else max(samples), 2)


async def measure(settings: Any, *, verify: bool = True) -> dict[str, Any]:
    from sqlalchemy import text

    from gateway.audit.keys import open_keyring
    from gateway.audit.search import AuditQuery, search_records, subject_hashes
    from gateway.audit.signer import node_trust
    from gateway.audit.verify import verify_all
    from gateway.storage import db

    engine = db.create_engine(settings)
    # Other work on the machine sways these timings (wall clock): the load is part of the figures.
    figures: dict[str, Any] = {"load_average_1m_before": round(os.getloadavg()[0], 2)}
    try:
        keyring = await open_keyring(settings, engine)
        async with engine.begin() as connection:
            await connection.execute(text("ANALYZE audit_records"))
            low, high, count = (
                await connection.execute(text("SELECT min(ts_ms), max(ts_ms), count(*) FROM audit_records"))
            ).one()
            sizes = (
                await connection.execute(
                    text(
                        "SELECT sum(pg_table_size(c.oid)), sum(pg_indexes_size(c.oid)) FROM pg_inherits i"
                        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_records'::regclass"
                    )
                )
            ).one()
            partitions = (
                await connection.execute(
                    text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_records'::regclass")
                )
            ).scalar()
        table_bytes, index_bytes = int(sizes[0]), int(sizes[1])
        figures.update(
            {
                "rows": int(count),
                "partitions": int(partitions),
                "bytes_per_record": round((table_bytes + index_bytes) / count),
                "table_bytes_per_record": round(table_bytes / count),
                "index_bytes_per_record": round(index_bytes / count),
                "total_gb": round((table_bytes + index_bytes) / 1e9, 2),
            }
        )
        rng = random.Random(7)

        async def timed(query: AuditQuery) -> tuple[float, int]:
            started = time.perf_counter()
            found = await search_records(engine, query, after=None, limit=PAGE + 1)
            return 1000 * (time.perf_counter() - started), len(found)

        for _ in range(20):  # warm the connection pool and the plan cache
            await timed(AuditQuery(subject_hashes=subject_hashes(keyring, _subject(rng))))
        subject_ms, subject_rows = [], []
        for index in range(SEARCHES):
            # Half drawn as records are (the hot enterprises often), half uniformly over all of them.
            uscc = _subject(rng) if index % 2 else f"91350200MA{rng.randrange(SUBJECTS):08d}"
            started = time.perf_counter()
            hashes = subject_hashes(keyring, uscc)  # what the route computes: the keyed hash under each suite
            found = await search_records(engine, AuditQuery(subject_hashes=hashes), after=None, limit=PAGE + 1)
            subject_ms.append(1000 * (time.perf_counter() - started))
            subject_rows.append(len(found))
        range_ms, week_ms = [], []
        for _ in range(SEARCHES):
            start = rng.randrange(int(low), int(high) - 86_400_000)
            range_ms.append((await timed(AuditQuery(from_ms=start, to_ms=start + 86_400_000)))[0])
            start = rng.randrange(int(low), int(high) - 7 * 86_400_000)
            week_ms.append((await timed(AuditQuery(from_ms=start, to_ms=start + 7 * 86_400_000, caller="dept-07")))[0])
        figures.update(
            {
                "subject_search_p50_ms": round(statistics.median(subject_ms), 2),
                "subject_search_p95_ms": _p95(subject_ms),
                "subject_search_max_ms": round(max(subject_ms), 2),
                "subject_searches": len(subject_ms),
                "subject_full_pages": sum(1 for rows in subject_rows if rows > PAGE),
                "range_first_page_p50_ms": round(statistics.median(range_ms), 2),
                "range_first_page_p95_ms": _p95(range_ms),
                "range_caller_week_p95_ms": _p95(week_ms),
                "page_size": PAGE,
            }
        )
        figures["load_average_1m_after_searches"] = round(os.getloadavg()[0], 2)
        if not verify:
            return figures
        trust = await node_trust(engine, settings)
        workers = os.cpu_count() or 1
        # As `msjx-gateway audit verify` runs it: one process per core reading slices of the table in storage order.
        with _walks_in_order() as walked:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            started, cpu_started = time.perf_counter(), time.process_time()
            reports = await verify_all(engine, trusted=trust, witness_dir=settings.witness_dir, workers=workers)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        workers_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        bad = [f"{report.chain_id}: {report.fault}" for report in reports if not report.ok]
        if bad:
            raise AssertionError(f"audit verify fails on the seeded data: {bad}")
        verified = sum(report.records for report in reports)
        figures.update(
            {
                "verify_ok": True,
                "verified_records": verified,
                "verify_workers": workers,
                "verify_db_rps": round(verified / wall),
                "verify_seconds": round(wall, 1),
                "verify_db_cpu_rps": round(verified / (cpu + workers_cpu)),  # the verifier's, not PostgreSQL's
                "verify_walked_in_order": len(walked),  # chains the scan could not prove (0 on intact data)
                "load_average_1m_after_verify": round(os.getloadavg()[0], 2),
            }
        )
        # Once more in one process, timing the hashing alone (every record and ciphertext, as the chain walk does).
        with _timed_walk() as walk:
            started = time.perf_counter()
            reports = await verify_all(engine, trusted=trust, witness_dir=settings.witness_dir, workers=1)
            wall = time.perf_counter() - started
        if not all(report.ok for report in reports):
            raise AssertionError("audit verify in one process fails on the seeded data")
        figures.update(
            {
                "verify_1w_rps": round(verified / wall),
                "verify_walk_cpu_rps": round(walk["records"] / walk["cpu"]),
            }
        )
    finally:
        await engine.dispose()
    return figures


@contextlib.contextmanager
def _timed_walk() -> Iterator[dict[str, float]]:
    """The CPU time of hashing every record (and ciphertext) and linking it, inside one `audit verify` in one process:
    the scan's hot loop, summed over its batches, without the reading."""
    from gateway.audit.rowscan import RowScanner as _Scanner

    totals = {"records": 0.0, "cpu": 0.0}
    original = _Scanner.feed

    def feed(self: Any, rows: list[Any]) -> None:
        started = time.process_time()
        try:
            original(self, rows)
        finally:
            totals["cpu"] += time.process_time() - started
            totals["records"] += len(rows)

    _Scanner.feed = feed  # type: ignore[method-assign]  # a measurement, undone below
    try:
        yield totals
    finally:
        _Scanner.feed = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _walks_in_order() -> Iterator[list[str]]:
    """The chains `audit verify` had to walk in height order because the scan could not prove them."""
    from gateway.audit import verify

    walked: list[str] = []
    original = verify.walk_in_order

    async def walk(engine: Any, plan: Any, **options: Any) -> Any:
        walked.append(plan.chain_id)
        return await original(engine, plan, **options)

    verify.walk_in_order = walk  # type: ignore[assignment]  # a measurement, undone below
    try:
        yield walked
    finally:
        verify.walk_in_order = original  # type: ignore[assignment]


async def _database(url: str | None) -> tuple[str, bool]:
    """The database to seed: the one given (empty, yours), or a new one on DATABASE_URL's server."""
    if url is not None:
        return url, False
    import asyncpg

    name = f"msjx_bench_scale_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(DATABASE_URL, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path=f"/{name}")), True


async def _drop(url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(DATABASE_URL, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await admin.close()


async def _run(
    records: int,
    keep: bool,
    database_url: str | None,
    data_dir: Path | None,
    measure_only: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    from gateway.settings import load_settings
    from gateway.storage import db

    if measure_only:  # a database seeded before (with --keep): measure again, e.g. after changing a query
        if database_url is None or data_dir is None:
            raise SystemExit("--measure-only needs --database-url and --data-dir of a database seeded with --keep")
        return await measure(load_settings(data_dir=data_dir, database_url=database_url), verify=verify)
    url, made = await _database(database_url)
    directory = data_dir or Path(tempfile.mkdtemp(prefix="msjx-bench-scale-"))
    try:
        settings = load_settings(data_dir=directory, database_url=url)
        await db.upgrade_async(settings)
        print(f"  seeding {records:,} records into {urlsplit(url).path.lstrip('/')}", file=sys.stderr, flush=True)
        figures = await seed(settings, records)
        figures.update(await measure(settings, verify=verify))
        if keep:
            figures["kept"] = {
                "database_url": url,
                "data_dir": str(directory),
                "verify": f"MSJX_DATA_DIR={directory} MSJX_DATABASE_URL={url} .venv/bin/msjx-gateway audit verify",
            }
        return figures
    finally:
        if not keep:
            if made:
                await _drop(url)
            if data_dir is None:
                shutil.rmtree(directory, ignore_errors=True)


def run(
    quick: bool = False,
    *,
    records: int | None = None,
    keep: bool = False,
    database_url: str | None = None,
    data_dir: Path | None = None,
    measure_only: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    """Seed, measure, write bench/results/audit_scale.json; return the flat figures."""
    import logging

    logging.getLogger("msjx.keyring").setLevel(logging.ERROR)
    count = records or (QUICK if quick else FULL)
    try:
        import uvloop

        figures = uvloop.run(_run(count, keep, database_url, data_dir, measure_only, verify))
    except ImportError:
        figures = asyncio.run(_run(count, keep, database_url, data_dir, measure_only, verify))
    command = "python -m bench.audit_scale" + (f" --records {count}" if count != FULL else "")
    if measure_only:
        command = "python -m bench.audit_scale --measure-only (of a database seeded before)"
        figures = {"records": figures["rows"], **figures}
        if not verify:
            command += " --no-verify"
            if RESULTS.exists():  # the verification figures of the run before, on the same data, said as such
                before = json.loads(RESULTS.read_text(encoding="utf-8"))
                kept = {key: value for key, value in before.items() if key.startswith("verif")}
                if kept:
                    figures.update(kept, verify_measured=before.get("verify_measured") or before.get("finished"))
    target = RESULTS if figures.get("rows", 0) >= FULL else RESULTS_SMALL
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = {"command": command, "finished": stamp, "cpu_count": os.cpu_count(), **figures}
    target.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    return {"finished": stamp, **figures}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=FULL, help=f"records to seed (default {FULL:,})")
    parser.add_argument("--keep", action="store_true", help="keep the database and data directory afterwards")
    parser.add_argument("--database-url", help="seed this (new, empty) database instead of making one")
    parser.add_argument("--data-dir", type=Path, help="the gateway data directory for its keys (default: a temp one)")
    parser.add_argument("--measure-only", action="store_true", help="measure a database seeded before with --keep")
    parser.add_argument("--no-verify", action="store_true", help="searches and sizes only (verification is long)")
    args = parser.parse_args(argv)
    figures = run(
        records=args.records,
        keep=args.keep,
        database_url=args.database_url,
        data_dir=args.data_dir,
        measure_only=args.measure_only,
        verify=not args.no_verify,
    )
    json.dump(figures, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
