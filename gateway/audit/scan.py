"""`audit verify` on PostgreSQL at full speed: every row read once in storage order, by several processes at once.

Reading a chain in height order costs PostgreSQL an index walk over every partition (7 µs a row here); a plain scan
of each partition's blocks costs 1.8. So each worker scans a slice of the blocks in one snapshot and hashes every
row it meets, as `ChainVerifier` does, into runs: rows of one chain whose heights follow each other and whose hashes
link. The runs of a chain, sorted by height, must then form exactly its heights from the start, each run's first
`prev_hash` naming the hash the run before ended on: the same proof as a walk in height order. This path can only
prove a chain intact; a row that does not verify, a gap, a second row at a height, or runs that do not link leave
the chain unproven, and `verify_all` walks it again in height order, which names the first fault.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import pickle
import sys
import tempfile
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.models import AUDIT_COLUMNS
from security.audit_chain import HASH_FIELD, OPTIONAL_FIELDS, ChainVerifier, hasher_for
from security.crypto import SuiteUnavailable

log = logging.getLogger("msjx.audit")
PARENT = "audit_records"
# Every column the hash covers, in the canonical (sorted) order, the optional ones (see OPTIONAL_FIELDS) among them;
# the record's own hash after them.
CANONICAL_COLUMNS = tuple(sorted(name for name in AUDIT_COLUMNS if name != HASH_FIELD))
MAIN_COLUMNS = tuple(name for name in CANONICAL_COLUMNS if name not in OPTIONAL_FIELDS)
SELECT_LIST = ", ".join((*CANONICAL_COLUMNS, HASH_FIELD))
# A row as the canonical bytes serialize it, filled positionally from the SELECT list: msgspec encodes the fields in
# this order, leaves out an optional one that is None (its default) and the record's own hash once set to UNSET, and
# writes every other field, None as null (their UNSET default never comes from the database). Building one of these
# costs a third of refilling a dict, and encoding it the same as orjson's dict (docs/performance.md).
_Row = msgspec.defstruct(
    "_Row",
    [(name, object, None if name in OPTIONAL_FIELDS else msgspec.UNSET) for name in (*CANONICAL_COLUMNS, HASH_FIELD)],
    omit_defaults=True,
    gc=False,  # rows hold strings, ints and bytes: no reference cycles to track
)
_ENCODE = msgspec.json.Encoder().encode
# Rows fetched at a time: large enough that a round trip is nothing, small enough to stay in the CPU's caches.
BATCH = 2000
# Below this many blocks a worker is not worth a process (about 40,000 records of the usual size).
BLOCKS_PER_WORKER = 5000
# Concurrent writers' batches land a little out of order (about one run per 2,000 rows here); a chain split into
# more runs than this is walked in height order instead.
MAX_RUNS = 100_000


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


@dataclass(frozen=True)
class Proof:
    """A chain's heights start…head_height, all present once and verifying; hashes at its checkpoint heights."""

    count: int
    head_height: int
    head_hash: str
    heads: Mapping[int, str]


class ProvenVerifier(ChainVerifier):
    """A `ChainVerifier` that takes rows proven elsewhere (`Proof`) and checks the checkpoints among them as `feed`
    does: each must be trusted and name the head the rows computed."""

    @property
    def checkpoint_heights(self) -> frozenset[int]:
        return frozenset(self._by_height)

    def accept(self, proof: Proof) -> None:
        for height in sorted(h for h in self._by_height if h <= proof.head_height):
            self.fault = self._check_checkpoints(self._by_height[height], height, proof.heads[height])
            if self.fault is not None:
                return
            self.sealed = height
        self.count += proof.count
        self.expected = proof.head_height + 1
        self.prev = proof.head_hash


def stitch(runs: Iterable[Run], start_height: int, start_hash: str) -> Proof | None:
    """The runs of one chain as one chain from `start_height` after `start_hash`, or None where they do not link."""
    expected, prev, heads = start_height, start_hash, {}
    for run in sorted(runs, key=lambda run: run.first_height):
        if run.first_height != expected or run.first_prev != prev:
            return None
        heads.update(run.heads)
        expected, prev = run.last_height + 1, run.last_hash
    return Proof(expected - start_height, expected - 1, prev, heads)


class _Open:
    """The run being extended, while a worker reads a chain's rows; `close` writes where it ended into the run."""

    __slots__ = ("expected", "heads", "prev", "run", "wanted")

    def __init__(self, height: int, prev: str, wanted: frozenset[int], runs: list[Run]) -> None:
        self.expected, self.prev, self.wanted, self.heads = height, prev, wanted, {}
        self.run = Run(height, prev, height - 1, prev, self.heads)
        runs.append(self.run)

    def close(self) -> None:
        self.run.last_height, self.run.last_hash = self.expected - 1, self.prev


class _Scanner:
    """Hashes rows as they come, into runs per chain; a chain with a row that does not verify is given up."""

    def __init__(self, targets: Mapping[str, ScanTarget]) -> None:
        self.targets = targets
        self.runs: dict[str, list[Run]] = {chain: [] for chain in targets}
        self.unproven: set[str] = set()
        self._open: dict[str, _Open] = {}
        self._hashers: dict[Any, Any] = {}

    def feed(self, rows: Iterable[Any]) -> None:
        """Hash rows as `_RecordHasher.hash_row` does: the canonical object of the sorted columns, sealed payloads by
        their digest, serialized and hashed after the previous hash. The hot loop of a full verification."""
        opened, make, encode, unset, fromhex = self._open, _Row, _ENCODE, msgspec.UNSET, bytes.fromhex
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


async def _scan_units(
    connection: Any, units: list[Unit], targets: Mapping[str, ScanTarget], ranges: bool = True
) -> _Scanner:
    scanner = _Scanner(targets)
    chains = sorted(targets)
    # The rows make no reference cycles, yet each batch of them would set off the cycle collector: 12 % of the CPU.
    collecting = gc.isenabled()
    gc.disable()
    try:
        await _scan_into(scanner, connection, units, chains, ranges)
    finally:
        if collecting:
            gc.enable()
    return scanner


async def _scan_into(scanner: _Scanner, connection: Any, units: list[Unit], chains: list[str], ranges: bool) -> None:
    for unit in units:
        # Names come from pg_partition_tree, quoted as identifiers; block numbers are ints.
        where = "chain_id = ANY($1::text[])"
        if ranges:
            where += f" AND ctid >= '({unit.first_block},0)'::tid AND ctid < '({unit.end_block},0)'::tid"
        query = f"SELECT {SELECT_LIST} FROM {_quote(unit.relation)} WHERE {where}"  # noqa: S608
        cursor = await connection.cursor(query, chains)
        while True:
            rows = await cursor.fetch(BATCH)
            if not rows:
                break
            scanner.feed(rows)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _begin(connection: Any, snapshot: str | None) -> None:
    await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if snapshot is not None:
        await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")


async def _worker(
    connect: dict[str, Any], snapshot: str, units: list[Unit], targets: Mapping[str, ScanTarget], ranges: bool
) -> tuple[dict[str, list[Run]], set[str]]:
    import asyncpg

    connection = await asyncpg.connect(**connect)
    try:
        await _begin(connection, snapshot)
        scanner = await _scan_units(connection, units, targets, ranges)
        await connection.execute("ROLLBACK")
        return scanner.result()
    finally:
        await connection.close()


async def _start_worker(job: tuple[Any, ...], answer: Path) -> asyncio.subprocess.Process:
    """A worker process (`python -m gateway.audit.scan`), given its job on stdin: the password travels there, never
    in its command line. Its own interpreter, not a fork of this one (which may be a server with threads). It writes
    its answer to the file `answer`: a pipe left unread while this process scans its own slice lost the end of it."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.audit.scan", stdin=PIPE, stdout=DEVNULL, stderr=PIPE
    )
    assert child.stdin is not None
    child.stdin.write(pickle.dumps((str(answer), job)))
    await child.stdin.drain()
    child.stdin.close()
    return child


async def _finish_worker(child: asyncio.subprocess.Process, answer: Path) -> tuple[dict[str, list[Run]], set[str]]:
    _, errors = await child.communicate()
    if child.returncode != 0:
        last = errors.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise RuntimeError(f"an audit scan worker failed (exit {child.returncode}): {last[0]}")
    answered = await asyncio.to_thread(answer.read_bytes)
    result: tuple[dict[str, list[Run]], set[str]] = pickle.loads(answered)  # noqa: S301 - our own child's answer
    return result


def _worker_main() -> None:
    answer, job = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - written by the parent, which started us
    work = _worker(*job)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(work)
    else:
        result = uvloop.run(work)
    Path(answer).write_bytes(pickle.dumps(result))


def split(sizes: list[tuple[str, int]], parts: int) -> list[list[Unit]]:
    """Tables with their sizes in blocks, in order, cut into `parts` slices of about as many blocks each."""
    total = sum(blocks for _, blocks in sizes)
    cuts = [total * index // parts for index in range(parts + 1)]
    slices: list[list[Unit]] = []
    for low, high in itertools.pairwise(cuts):
        units, offset = [], 0
        for relation, blocks in sizes:
            first, end = max(low, offset), min(high, offset + blocks)
            if first < end:
                units.append(Unit(relation, first - offset, end - offset))
            offset += blocks
        if units:
            slices.append(units)
    return slices


def _connect_args(engine: AsyncEngine) -> dict[str, Any] | None:
    """asyncpg.connect's arguments for the engine's database, if a worker process can be given them."""
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    if args:
        return None
    try:
        pickle.dumps(kwargs)
    except (pickle.PicklingError, TypeError, AttributeError):  # an SSL context: workers would connect without it
        return None
    return kwargs


async def scan_chains(
    engine: AsyncEngine,
    targets: Mapping[str, ScanTarget],
    *,
    workers: int = 1,
    blocks_per_worker: int = BLOCKS_PER_WORKER,
) -> tuple[dict[str, list[Run]], set[str]]:
    """Scan the audit table once for `targets`: the runs of each chain (to `stitch`), and the chains left unproven.

    One snapshot for every worker (exported by this connection, which also holds ACCESS SHARE on the table, so no
    partition is dropped or rewritten under a worker); `workers` processes at most, one per `blocks_per_worker`.
    """
    connect = _connect_args(engine) if workers > 1 else None
    async with engine.connect() as holder:
        raw = await holder.get_raw_connection()
        connection = raw.driver_connection
        assert connection is not None
        await _begin(connection, None)
        try:
            await connection.execute(f"LOCK TABLE {PARENT} IN ACCESS SHARE MODE")  # before the snapshot is taken
            # Once its own slice is read this transaction waits for the workers, idle: it must not be ended for that.
            await connection.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            sizes = await _tables(connection)
            tops = {
                chain: await connection.fetchval(
                    f"SELECT max(height) FROM {PARENT} WHERE chain_id = $1 AND height >= $2",  # noqa: S608
                    chain,
                    target.start_height,
                )
                for chain, target in targets.items()
            }
            # TID range scans (PostgreSQL 14) let workers share one table; before, each takes whole tables.
            ranges = int(await connection.fetchval("SHOW server_version_num")) >= 140000
            total = sum(blocks for _, blocks in sizes)
            parts = max(1, min(workers, total // max(1, blocks_per_worker))) if connect is not None else 1
            if ranges:
                slices = split(sizes, parts)
            else:
                parts = min(parts, len(sizes))
                slices = [[Unit(name, 0, blocks) for name, blocks in sizes[index::parts]] for index in range(parts)]
            if len(slices) <= 1:
                return _complete(
                    [(await _scan_units(connection, slices[0] if slices else [], targets, ranges)).result()], tops
                )
            snapshot = await connection.fetchval("SELECT pg_export_snapshot()")
            pending: list[tuple[asyncio.subprocess.Process | None, list[Unit]]] = []
            with tempfile.TemporaryDirectory(prefix="msjx-verify-") as answers:
                try:
                    for index, units in enumerate(slices[1:]):
                        try:
                            job = (connect, snapshot, units, targets, ranges)
                            pending.append((await _start_worker(job, Path(answers, str(index))), units))
                        except OSError as exc:
                            log.warning("audit verify: no worker process (%s); its slice is read here", exc)
                            pending.append((None, units))
                    # This process takes the first slice itself, in the transaction that holds the snapshot.
                    results = [(await _scan_units(connection, slices[0], targets, ranges)).result()]
                    for index, (child, units) in enumerate(pending):
                        if child is not None:
                            try:
                                results.append(await _finish_worker(child, Path(answers, str(index))))
                                continue
                            except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as exc:
                                log.warning("audit verify: %s; its slice is read in the main process", exc)
                        # The snapshot is still held here: the same rows, read in this process instead.
                        results.append((await _scan_units(connection, units, targets, ranges)).result())
                finally:
                    for child, _ in pending:
                        if child is not None and child.returncode is None:
                            child.kill()
                            await child.wait()
        finally:
            await connection.execute("ROLLBACK")
    return _complete(results, tops)


def _complete(
    results: list[tuple[dict[str, list[Run]], set[str]]], tops: Mapping[str, int | None]
) -> tuple[dict[str, list[Run]], set[str]]:
    """The slices' runs together. A chain whose runs do not reach the highest height the database holds for it (in
    the same snapshot, by its index) is unproven: a table the scan did not read cannot cut a chain's tail unseen."""
    runs: dict[str, list[Run]] = {}
    unproven: set[str] = set()
    for found, lost in results:
        unproven |= lost
        for chain, chain_runs in found.items():
            runs.setdefault(chain, []).extend(chain_runs)
    for chain, chain_runs in runs.items():
        if max((run.last_height for run in chain_runs), default=None) != tops.get(chain):
            unproven.add(chain)
    return {chain: chain_runs for chain, chain_runs in runs.items() if chain not in unproven}, unproven


async def _tables(connection: Any) -> list[tuple[str, int]]:
    """The tables that hold the audit rows, with their sizes in blocks: the partitions, or the table itself where it
    is not partitioned (pg_partition_tree lists nothing for a plain table)."""
    partitioned = await connection.fetchval("SELECT relkind = 'p' FROM pg_class WHERE oid = $1::regclass", PARENT)
    query = (
        "SELECT t.relid::regclass::text, pg_relation_size(t.relid) / current_setting('block_size')::int"
        " FROM pg_partition_tree($1::regclass) t WHERE t.isleaf ORDER BY 1"
        if partitioned
        else "SELECT $1::regclass::text, pg_relation_size($1::regclass) / current_setting('block_size')::int"
    )
    return [(str(name), int(blocks)) for name, blocks in await connection.fetch(query, PARENT) if blocks]


if __name__ == "__main__":
    # By its module name, so that what it sends back names gateway.audit.scan's classes, not __main__'s.
    from gateway.audit.scan import _worker_main as worker_main

    worker_main()
