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
import contextlib
import itertools
import logging
import pickle
import sys
import tempfile
from asyncio.subprocess import PIPE
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.rowscan import RowScanner, Run, ScanTarget, Unit, begin, scan_units
from gateway.storage.models import AUDIT_COLUMNS
from security.audit_chain import HASH_FIELD, OPTIONAL_FIELDS, ChainVerifier

log = logging.getLogger("msjx.audit")
PARENT = "audit_records"
# Every column the hash covers, in the canonical (sorted) order, the optional ones (see OPTIONAL_FIELDS) among them.
CANONICAL_COLUMNS = tuple(sorted(name for name in AUDIT_COLUMNS if name != HASH_FIELD))
MAIN_COLUMNS = tuple(name for name in CANONICAL_COLUMNS if name not in OPTIONAL_FIELDS)
# Below this many blocks a worker is not worth a process (about 40,000 records of the usual size).
BLOCKS_PER_WORKER = 5000
# The table is cut into up to this many slices a process, of this many blocks at least (about 8,000 records): small
# enough that the last ones leave no process idle for long, large enough that their queries cost nothing.
SLICES_PER_PROCESS = 32
SLICE_BLOCKS = 1000
__all__ = ["RowScanner", "Run", "ScanTarget", "Unit", "scan_chains", "split", "stitch"]


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
    partition is dropped or rewritten under a worker); `workers` processes at most, one per `blocks_per_worker`. The
    table is cut into several slices a process, handed out as the processes ask for more: on a machine shared with
    other work the processes do not get the same CPU, and one given a fixed half would leave the others waiting.
    """
    connect = _connect_args(engine) if workers > 1 else None
    async with engine.connect() as holder:
        raw = await holder.get_raw_connection()
        connection = raw.driver_connection
        assert connection is not None
        await begin(connection, None)
        try:
            await connection.execute(f"LOCK TABLE {PARENT} IN ACCESS SHARE MODE")  # before the snapshot is taken
            # Once its own slices are read this transaction waits for the workers, idle: it must not be ended for that.
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
                pieces = max(parts, min(parts * SLICES_PER_PROCESS, total // SLICE_BLOCKS))
                slices = deque(split(sizes, pieces))
            else:
                slices = deque([Unit(name, 0, blocks)] for name, blocks in sizes)
                parts = min(parts, len(slices))
            if parts <= 1:
                scanner = await scan_units(connection, slices, targets, CANONICAL_COLUMNS, ranges)
                return _complete([scanner.result()], tops)
            snapshot = await connection.fetchval("SELECT pg_export_snapshot()")
            results = await _scan_with_workers(connection, slices, parts - 1, (connect, snapshot, targets, ranges))
        finally:
            await connection.execute("ROLLBACK")
    return _complete(results, tops)


async def _scan_with_workers(
    connection: Any, slices: deque[list[Unit]], count: int, job: tuple[Any, ...]
) -> list[tuple[dict[str, list[Run]], set[str]]]:
    """Read `slices` in this process and `count` worker processes, each taking the next slice when it is done."""
    connect, snapshot, targets, ranges = job
    helpers: list[_Helper] = []
    with tempfile.TemporaryDirectory(prefix="msjx-verify-") as answers:
        try:
            for index in range(count):
                answer = Path(answers, str(index))
                try:
                    child = await _start_worker((connect, snapshot, targets, CANONICAL_COLUMNS, ranges), answer)
                except OSError as exc:
                    log.warning("audit verify: no worker process (%s); its slices are read here", exc)
                    continue
                helper = _Helper(child, answer)
                helper.task = asyncio.create_task(helper.drive(slices))
                helpers.append(helper)
            # This process reads slices too, in the transaction that holds the snapshot, until none is left.
            own = await scan_units(connection, _take(slices), targets, CANONICAL_COLUMNS, ranges)
            results = [own.result()]
            for helper in helpers:
                try:
                    results.append(await helper.finish())
                    continue
                except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as exc:
                    log.warning("audit verify: %s; its slices are read in the main process", exc)
                # The snapshot is still held here: the same rows, read in this process instead.
                results.append(
                    (await scan_units(connection, helper.taken, targets, CANONICAL_COLUMNS, ranges)).result()
                )
        finally:
            for helper in helpers:
                await helper.stop()
    return results


def _take(slices: deque[list[Unit]]) -> Iterator[list[Unit]]:
    while slices:
        yield slices.popleft()


async def _start_worker(job: tuple[Any, ...], answer: Path) -> asyncio.subprocess.Process:
    """A worker process (`python -m gateway.audit.rowscan`), given its job on stdin: the password travels there,
    never in its command line. Its own interpreter, not a fork of this one (which may be a server with threads)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.audit.rowscan", stdin=PIPE, stdout=PIPE, stderr=PIPE
    )
    assert child.stdin is not None
    child.stdin.write(pickle.dumps((str(answer), job)))
    return child


class _Helper:
    """A worker process, the slices handed to it, and the task that hands them."""

    def __init__(self, child: asyncio.subprocess.Process, answer: Path) -> None:
        self.child, self.answer = child, answer
        self.taken: list[list[Unit]] = []
        self.task: asyncio.Task[None] | None = None

    async def drive(self, slices: deque[list[Unit]]) -> None:
        """Hand slices over, one ahead of the one being read so the worker never waits for the next; then None."""
        stdin, stdout = self.child.stdin, self.child.stdout
        assert stdin is not None and stdout is not None
        sent = done = 0
        while True:
            while slices and sent - done < 2:
                units = slices.popleft()
                self.taken.append(units)
                stdin.write(pickle.dumps(units))
                sent += 1
            await stdin.drain()
            if done == sent:
                break
            if not await stdout.readline():
                raise RuntimeError("an audit scan worker ended before reading its slices")
            done += 1
        stdin.write(pickle.dumps(None))
        await stdin.drain()
        stdin.close()

    async def finish(self) -> tuple[dict[str, list[Run]], set[str]]:
        """The worker's runs, once it has read every slice it was given and exited."""
        assert self.task is not None
        try:
            await self.task
        finally:
            _, errors = await self.child.communicate()
        if self.child.returncode != 0:
            last = errors.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise RuntimeError(f"an audit scan worker failed (exit {self.child.returncode}): {last[0]}")
        answered = await asyncio.to_thread(self.answer.read_bytes)
        result: tuple[dict[str, list[Run]], set[str]] = pickle.loads(answered)  # noqa: S301 - our own child's
        return result

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.child.returncode is None:
            self.child.kill()
            await self.child.wait()


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
