"""The worker side of `audit verify`'s scan (gateway/audit/scan.py): rows hashed into runs, slice after slice.

Imported by the worker processes on their own: nothing here pulls in SQLAlchemy or the models (0.5 s a process).
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from security.audit_chain import HASH_FIELD, OPTIONAL_FIELDS, hasher_for
from security.crypto import SuiteUnavailable

# Rows fetched at a time: large enough that a round trip is nothing, small enough to stay in the CPU's caches.
BATCH = 2000
# Concurrent writers' batches land a little out of order (about one run per 2,000 rows here); a chain split into
# more runs than this is walked in height order instead.
MAX_RUNS = 100_000


@cache
def row_type(columns: tuple[str, ...]) -> Any:
    """A row as the canonical bytes serialize it, filled positionally from `select_list(columns)`: msgspec encodes
    the fields in this (sorted) order, leaves out an optional one that is None (its default) and the record's own hash
    once set to UNSET, and writes every other field, None as null (their UNSET default never comes from the
    database). Building one costs a third of refilling a dict for orjson, and encoding it the same
    (docs/performance.md); tests/test_audit_scan.py checks the bytes are the writer's."""
    return msgspec.defstruct(
        "AuditRow",
        [(name, object, None if name in OPTIONAL_FIELDS else msgspec.UNSET) for name in (*columns, HASH_FIELD)],
        omit_defaults=True,
        gc=False,  # rows hold strings, ints and bytes: no reference cycles to track
    )


def select_list(columns: tuple[str, ...]) -> str:
    """`columns` (every column the hash covers, sorted) and then the record's own hash."""
    return ", ".join((*columns, HASH_FIELD))


_ENCODE = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Unit:
    """Blocks [first_block, end_block) of one table. Its size is read after the snapshot is taken, so every row the
    snapshot sees lies below it: a row is written into a block that exists before its transaction commits."""

    relation: str
    first_block: int
    end_block: int


@dataclass
class ScanTarget:
    """What a worker needs of a chain: its first height to verify and the heights of its checkpoints."""

    start_height: int
    checkpoint_heights: frozenset[int]


@dataclass
class Run:
    """Consecutive heights of one chain that verified, each linked to the one before."""

    first_height: int
    first_prev: str
    last_height: int
    last_hash: str
    heads: dict[int, str] = field(default_factory=dict)  # the hash at each checkpoint height in the run


class _Open:
    """The run being extended, while a worker reads a chain's rows; `close` writes where it ended into the run."""

    __slots__ = ("expected", "heads", "prev", "run", "wanted")

    def __init__(self, height: int, prev: str, wanted: frozenset[int], runs: list[Run]) -> None:
        self.expected, self.prev, self.wanted, self.heads = height, prev, wanted, {}
        self.run = Run(height, prev, height - 1, prev, self.heads)
        runs.append(self.run)

    def close(self) -> None:
        self.run.last_height, self.run.last_hash = self.expected - 1, self.prev


class RowScanner:
    """Hashes rows as they come, into runs per chain; a chain with a row that does not verify is given up."""

    def __init__(self, targets: Mapping[str, ScanTarget], columns: tuple[str, ...]) -> None:
        self.targets, self.columns = targets, columns
        self.runs: dict[str, list[Run]] = {chain: [] for chain in targets}
        self.unproven: set[str] = set()
        self._open: dict[str, _Open] = {}
        self._hashers: dict[Any, Any] = {}

    def feed(self, rows: Iterable[Any]) -> None:
        """Hash rows as `_RecordHasher.hash_row` does: the canonical object of the sorted columns, sealed payloads by
        their digest, serialized and hashed after the previous hash. The hot loop of a full verification."""
        opened, make, encode, unset, fromhex = self._open, row_type(self.columns), _ENCODE, msgspec.UNSET, bytes.fromhex
        suite: Any = None
        hasher = new_hash = prefix = digest = None
        for values in rows:
            row = make(*values)
            chain, height, prev = row.chain_id, row.height, row.prev_hash
            state = opened.get(chain)
            if state is None or height != state.expected or prev != state.prev:
                state = self._start(chain, height, prev)
                if state is None:
                    continue
            if row.suite != suite or hasher is None:
                hasher = self._hasher(row.suite)
                if hasher is None:
                    self._give_up(chain)
                    continue
                suite, new_hash, digest = row.suite, hasher.new_hash, hasher.payload_digest
                prefix = hasher.payload_prefix
            stored = row.record_hash
            row.record_hash = unset  # left out of the bytes, as the record's own hash is
            try:
                # Sealed payloads by their digest, as payload_digest makes it (called only for a non-bytes value).
                payload = row.request_payload
                if payload is not None:
                    row.request_payload = (
                        prefix + new_hash(payload).hexdigest() if type(payload) is bytes else digest(payload)
                    )
                payload = row.response_payload
                if payload is not None:
                    row.response_payload = (
                        prefix + new_hash(payload).hexdigest() if type(payload) is bytes else digest(payload)
                    )
                own = new_hash(fromhex(prev) + encode(row)).hexdigest()
            except (TypeError, ValueError, msgspec.EncodeError):  # a value no record holds, a bad prev_hash
                self._give_up(chain)
                continue
            if own != stored:
                self._give_up(chain)
                continue
            state.prev = own
            state.expected = height + 1
            if height in state.wanted:
                state.heads[height] = own

    def _start(self, chain: str, height: int, prev: str) -> _Open | None:
        """A row that does not extend its chain's open run starts a new one (stitched, or refused, later)."""
        if chain in self.unproven:
            return None
        target = self.targets.get(chain)
        if target is None or height < target.start_height:  # archived heights still in a partition: not walked
            return None
        runs = self.runs[chain]
        if len(runs) >= MAX_RUNS:
            self._give_up(chain)
            return None
        if chain in self._open:
            self._open[chain].close()
        state = self._open[chain] = _Open(height, prev, target.checkpoint_heights, runs)
        return state

    def _give_up(self, chain: str) -> None:
        self.unproven.add(chain)
        self._open.pop(chain, None)
        self.runs[chain] = []

    def _hasher(self, suite: Any) -> Any:
        if suite in self._hashers:
            return self._hashers[suite]
        try:
            hasher = hasher_for(suite) if isinstance(suite, str) else None
        except SuiteUnavailable:
            hasher = None
        self._hashers[suite] = hasher
        return hasher

    def result(self) -> tuple[dict[str, list[Run]], set[str]]:
        for state in self._open.values():
            state.close()
        return {chain: runs for chain, runs in self.runs.items() if chain not in self.unproven}, self.unproven


async def scan_units(
    connection: Any,
    units: Iterable[Sequence[Unit]],
    targets: Mapping[str, ScanTarget],
    columns: tuple[str, ...],
    ranges: bool = True,
    scanner: RowScanner | None = None,
) -> RowScanner:
    """Read the slices `units` (each a list of `Unit`s) into `scanner` (a new one if None), one after another as the
    iterable gives them."""
    scanner = scanner if scanner is not None else RowScanner(targets, columns)
    chains = sorted(targets)
    query = f"SELECT {select_list(columns)} FROM {{table}} WHERE chain_id = ANY($1::text[])"  # noqa: S608
    # The rows make no reference cycles, yet each batch of them would set off the cycle collector: 12 % of the CPU.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for slice_ in units:
            for unit in slice_:
                # Names come from pg_partition_tree, quoted as identifiers; block numbers are ints.
                sql = query.format(table=_quote(unit.relation))
                if ranges:
                    sql += f" AND ctid >= '({unit.first_block},0)'::tid AND ctid < '({unit.end_block},0)'::tid"
                cursor = await connection.cursor(sql, chains)
                while True:
                    rows = await cursor.fetch(BATCH)
                    if not rows:
                        break
                    scanner.feed(rows)
    finally:
        if collecting:
            gc.enable()
    return scanner


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def begin(connection: Any, snapshot: str | None) -> None:
    """A read-only repeatable-read transaction, in the exported `snapshot` if one is given."""
    await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if snapshot is not None:
        await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")


def _slices_from(source: BinaryIO, done: BinaryIO) -> Iterable[Sequence[Unit]]:
    """The slices the parent sends, one pickle each until None; a line on `done` after each is read, which asks for
    the next. Blocking reads: while this process waits for work there is nothing else for it to do."""
    while True:
        units = pickle.load(source)  # noqa: S301 - written by the parent, which started us
        if units is None:
            return
        yield units
        done.write(b"\n")
        done.flush()


async def _work(job: tuple[Any, ...], source: BinaryIO, done: BinaryIO) -> tuple[dict[str, list[Run]], set[str]]:
    import asyncpg

    connect, snapshot, targets, columns, ranges = job
    connection = await asyncpg.connect(**connect)
    try:
        await begin(connection, snapshot)
        scanner = await scan_units(connection, _slices_from(source, done), targets, columns, ranges)
        await connection.execute("ROLLBACK")
        return scanner.result()
    finally:
        await connection.close()


def worker_main() -> None:
    """`python -m gateway.audit.rowscan`: the job, then slices, as pickles on stdin (the password travels there, never
    in the command line); a line on stdout for each slice read; the runs, pickled, into the file the job names (a pipe
    left unread while the parent scans a slice of its own lost the end of an answer)."""
    source, done = sys.stdin.buffer, sys.stdout.buffer
    answer, job = pickle.load(source)  # noqa: S301 - written by the parent, which started us
    work = _work(job, source, done)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(work)
    else:
        result = uvloop.run(work)
    Path(answer).write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    # By its module name, so that what it sends back names gateway.audit.rowscan's classes, not __main__'s.
    from gateway.audit.rowscan import worker_main as main

    main()
