"""Issue #15 item 4, measured: a batch chunk's audit as one record per subject and operation (what runs), or as one
record per chunk and operation carrying each subject's keyed hash (plus the index rows a subject search would need).

`.venv/bin/python -m bench.batch_audit [--chunks N] [--rounds R]` drives the real `AuditWriter` on a SQLite file (WAL,
synchronous=FULL, its committer process) with chunks of 500 subjects × 2 operations, alternating the two designs
round by round, and prints CPU µs (this process + the committer) and wall µs per subject-operation for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

CHUNK = 500
OPERATIONS = (("credit", "dishonest-debtor"), ("golden-tax", "tax-credit-rating"))
INDEX_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_batch_subjects (subject_hash TEXT NOT NULL, chain_id TEXT NOT NULL,"
    " record_id TEXT NOT NULL, batch_id TEXT NOT NULL, decision TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS bench_batch_subjects_hash ON bench_batch_subjects (subject_hash)",
)


def _chunk(number: int) -> list[tuple[str, bytes]]:
    """(uscc, result line) for every subject and operation of one chunk, as `BatchService._call` makes them."""
    from simulators.enterprises import register_uscc

    out = []
    for index in range(CHUNK):
        uscc = register_uscc(number * CHUNK + index)
        for op_index, (service, operation) in enumerate(OPERATIONS):
            data = (
                {"cases": [], "listed": False, "uscc": uscc}
                if op_index == 0
                else {"uscc": uscc, "year": 2025, "rating": "B"}
            )
            line = {"line": index * 2 + op_index + 1, "uscc": uscc, "service": service, "operation": operation}
            out.append((uscc, orjson.dumps({**line, "status": 200, "data": data})))
    return out


def _event(**values: Any) -> Any:
    from gateway.audit.writer import AuditEvent

    return AuditEvent(
        request_id="0" * 32,
        caller_id="bench-batch",
        department="bench",
        method="BATCH",
        path="/v1/batches/b-bench",
        purpose="BENCH-BATCH",
        grant_id="g" * 16,
        target_id="b-bench",
        reason="batch b-bench chunk 0 attempt 1",
        **values,
    )


async def per_subject(writer: Any, chunk: list[tuple[str, bytes]]) -> None:
    events = [
        _event(
            event="batch.subject",
            decision="allowed",
            status_code=200,
            service=OPERATIONS[i % 2][0],
            operation=OPERATIONS[i % 2][1],
            subject=uscc,
            request_body=orjson.dumps([uscc, {}]),
            response_body=line,
            fields=("uscc", "listed", "cases"),
        )
        for i, (uscc, line) in enumerate(chunk)
    ]
    for start in range(0, len(events), 64):
        await asyncio.gather(*(writer.append(event) for event in events[start : start + 64]))


async def per_chunk(writer: Any, chunk: list[tuple[str, bytes]], index_db: Any) -> None:
    """One record per operation: its sealed payload lists each subject's keyed hash and outcome; the search needs
    the same hashes in an index table beside the chain, written after the records are durable."""
    rows = []
    for op_index, (service, operation) in enumerate(OPERATIONS):
        mine = chunk[op_index::2]
        hashes = [writer.subject_hash(uscc) for uscc, _ in mine]
        payload = orjson.dumps({"subjects": [[h, 200] for h in hashes]})
        record = await writer.append(
            _event(
                event="batch.chunk",
                decision="allowed",
                status_code=200,
                service=service,
                operation=operation,
                request_body=payload,
                response_body=b"\n".join(line for _, line in mine),
            )
        )
        rows += [(h, record["chain_id"], record["record_id"], "b-bench", "allowed") for h in hashes]
    await asyncio.to_thread(_index, index_db, rows)


def _index(path: str, rows: list[tuple[str, ...]]) -> None:
    import sqlite3

    connection = sqlite3.connect(path, timeout=30)
    try:
        connection.execute("PRAGMA synchronous=FULL")
        with connection:
            connection.executemany("INSERT INTO bench_batch_subjects VALUES (?, ?, ?, ?, ?)", rows)
    finally:
        connection.close()


async def run(chunks: int, rounds: int) -> dict[str, Any]:
    import sqlite3

    from bench.audit import _cpu_seconds, _writer
    from gateway.settings import load_settings
    from gateway.storage import db

    with tempfile.TemporaryDirectory(prefix="msjx-batch-audit-") as directory:
        settings = load_settings(data_dir=Path(directory))
        await db.upgrade_async(settings)
        engine, writer = await _writer(settings, "standard", chain="batch-audit")
        database = str(engine.url.database)
        with sqlite3.connect(database) as connection:
            for statement in INDEX_DDL:
                connection.execute(statement)
        work = [_chunk(n) for n in range(chunks)]
        figures: dict[str, list[tuple[float, float]]] = {"per_subject": [], "per_chunk": []}
        try:
            await per_subject(writer, work[0])  # warm-up
            for _ in range(rounds):
                for name in ("per_subject", "per_chunk"):
                    started, cpu_started = time.perf_counter(), _cpu_seconds(writer)
                    for chunk in work:
                        if name == "per_subject":
                            await per_subject(writer, chunk)
                        else:
                            await per_chunk(writer, chunk, database)
                    wall, cpu = time.perf_counter() - started, _cpu_seconds(writer) - cpu_started
                    ops = chunks * CHUNK * len(OPERATIONS)
                    figures[name].append((cpu / ops * 1e6, wall / ops * 1e6))
        finally:
            await writer.close()
            await engine.dispose()
    return {
        name: {
            "cpu_us_per_subject_op": [round(cpu, 1) for cpu, _ in values],
            "wall_us_per_subject_op": [round(wall, 1) for _, wall in values],
        }
        for name, values in figures.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.chunks, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
