"""Moving audit records out of the database: exports for officers, and hash-linked archives for retention.

An export is a time range of records with the checkpoints that sign it, extended to the next checkpoint so
every exported record is covered by a signature. An archive is a chain segment ending at a signed checkpoint;
its rows leave the database only after the written file has been read back and verified: on SQLite deleted in
one transaction with the archive's registration, on PostgreSQL with their whole month, a partition detached and
dropped once every row in it is in a registered archive (see `archive_log`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.files import (
    LineWriter,
    checkpoint_line,
    file_digest,
    header_line,
    register_line,
    verify_file,
    write_records,
)
from gateway.audit.node_keys import list_node_keys
from gateway.audit.partitions import (
    Partition,
    drop_partition,
    is_partitioned,
    list_partitions,
    month_of,
    month_start_ms,
)
from gateway.audit.rows import (
    ARCHIVE_TABLE,
    AUDIT_TABLE,
    CHECKPOINT_TABLE,
    chain_ids,
    fetch_row,
    iter_chain,
    list_archives,
    load_checkpoints,
)
from schemas.errors import MsjxError
from security.audit_chain import GENESIS_HASH
from security.checkpoints import TrustedKeys
from security.keyring import now_ms


class ArchiveError(MsjxError):
    """An archive could not be written or did not verify; the database was left as it was."""


@dataclass(frozen=True)
class ExportedChain:
    chain_id: str
    from_height: int
    to_height: int
    records: int
    checkpoints: int
    sealed: bool


async def export_records(
    engine: AsyncEngine,
    path: Path,
    *,
    from_ms: int,
    to_ms: int,
    chains: list[str] | None = None,
    register: Sequence[BaseModel] = (),
) -> list[ExportedChain]:
    """Write records with from_ms <= time < to_ms (and up to the next checkpoint) as JSON Lines.

    `register` is the requesting departments' register of use, storage and destruction (条例) for the same range,
    which travels with the audit (the sharing room reads it: `gateway.sharing.obligations.register_entries`)."""
    plans: list[dict[str, Any]] = []
    for chain_id in chains if chains is not None else await chain_ids(engine):
        async with engine.connect() as connection:
            low, high = (
                await connection.execute(
                    select(func.min(AUDIT_TABLE.c.height), func.max(AUDIT_TABLE.c.height)).where(
                        AUDIT_TABLE.c.chain_id == chain_id,
                        AUDIT_TABLE.c.ts_ms >= from_ms,
                        AUDIT_TABLE.c.ts_ms < to_ms,
                    )
                )
            ).one()
            if low is None:
                continue
            sealing = (
                await connection.execute(
                    select(func.min(CHECKPOINT_TABLE.c.height)).where(
                        CHECKPOINT_TABLE.c.chain_id == chain_id, CHECKPOINT_TABLE.c.height >= high
                    )
                )
            ).scalar()
        first = await fetch_row(engine, chain_id, "height", low)
        assert first is not None
        to_height = int(sealing) if sealing is not None else int(high)
        plans.append(
            {
                "chain_id": chain_id,
                "from_height": int(low),
                "to_height": to_height,
                "start_hash": first["prev_hash"],
                "sealed": sealing is not None,
            }
        )
    for plan in plans:
        low, high = plan["from_height"], plan["to_height"]
        plan["checkpoints"] = [
            cp for cp in await load_checkpoints(engine, plan["chain_id"], after=low - 1) if cp.height <= high
        ]
    # The file carries the public keys that signed its checkpoints, as registered; a verifier still trusts only
    # the keys it is given (--pubkey), and reports carried ones as "carried, not pinned".
    signing = {cp.key_id for plan in plans for cp in plan["checkpoints"]}
    carried = [key.to_dict() for key in await list_node_keys(engine) if key.key_id in signing]
    writer = LineWriter(path, compress=path.suffix == ".gz")
    results = []
    try:
        ranges = [{k: plan[k] for k in ("chain_id", "from_height", "to_height", "start_hash")} for plan in plans]
        writer.write(
            header_line(
                "export",
                created_ms=now_ms(),
                from_ms=from_ms,
                to_ms=to_ms,
                chains=ranges,
                register_entries=len(register),
                node_keys=carried,
            )
        )
        for plan in plans:
            chain_id, low, high = plan["chain_id"], plan["from_height"], plan["to_height"]
            checkpoints = plan["checkpoints"]
            for checkpoint in checkpoints:
                writer.write(checkpoint_line(checkpoint))
            count = 0
            async for rows in iter_chain(engine, chain_id, after=low - 1):
                rows = [row for row in rows if row["height"] <= high]
                count += write_records(writer, rows)[0]
                if not rows or rows[-1]["height"] >= high:
                    break
            results.append(ExportedChain(chain_id, low, high, count, len(checkpoints), plan["sealed"]))
        for entry in register:
            writer.write(register_line(entry.model_dump(mode="json")))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return results


@dataclass(frozen=True)
class ArchiveResult:
    chain_id: str
    seq: int
    from_height: int
    to_height: int
    records: int
    path: Path
    digest: str
    removed: bool = True  # its rows left the database with the archive (False: they leave with their month)


@dataclass
class ArchiveRun:
    """What `archive_log` did: the archives written, and on PostgreSQL the months dropped and those that wait."""

    archives: list[ArchiveResult] = field(default_factory=list)
    partitioned: bool = False
    through_ms: int | None = None  # partitioned: whole months before this time are the ones past retention
    dropped: list[Partition] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


async def archive_log(
    engine: AsyncEngine,
    archive_dir: Path,
    *,
    before_ms: int,
    trusted: TrustedKeys,
    suite: str = "standard",
    chains: list[str] | None = None,
) -> ArchiveRun:
    """Archive records past retention. On SQLite (one table) as `archive_chains`: rows older than `before_ms` up to
    the last checkpoint among them, deleted once their file verifies. On PostgreSQL (monthly partitions) whole
    months only: every row of the months that ended by `before_ms` is archived (up to the first checkpoint that
    signs the last of them), and each such month whose rows are all in verified, registered archives is detached
    and dropped. The month `before_ms` falls in waits until it has ended: no row is ever deleted one by one."""
    async with engine.connect() as connection:
        partitioned = await is_partitioned(connection)
    if not partitioned:
        found = await archive_chains(
            engine, archive_dir, before_ms=before_ms, trusted=trusted, suite=suite, chains=chains
        )
        return ArchiveRun(archives=found)
    through_ms = month_start_ms(*month_of(before_ms))
    run = ArchiveRun(partitioned=True, through_ms=through_ms)
    for chain_id in chains if chains is not None else await chain_ids(engine):
        result = await archive_chain(
            engine, archive_dir, chain_id, before_ms=through_ms, trusted=trusted, suite=suite, whole=True
        )
        if result is not None:
            run.archives.append(result)
    if chains is not None:
        return run  # a month holds every chain's rows: it can go only when all chains were archived
    async with engine.connect() as connection:
        partitions = [p for p in await list_partitions(connection) if p.high_ms <= through_ms]
    for partition in partitions:
        why = await _unarchived(engine, partition)
        if why is not None:
            run.waiting.append(f"{partition.month} ({partition.name}) stays: {why}")
            continue
        await drop_partition(engine, partition)
        run.dropped.append(partition)
    return run


async def _unarchived(engine: AsyncEngine, partition: Partition) -> str | None:
    """Why the month cannot be dropped (a chain with rows in it beyond its last archive), or None."""
    async with engine.connect() as connection:
        # The partition's name comes from the catalog, and was made by audit_partitions (digits only).
        heights = await connection.execute(
            text(f'SELECT chain_id, max(height) FROM "{partition.name}" GROUP BY chain_id')  # noqa: S608
        )
        found = {str(chain): int(height) for chain, height in heights}
        archived = {
            str(chain): int(height)
            for chain, height in await connection.execute(
                select(ARCHIVE_TABLE.c.chain_id, func.max(ARCHIVE_TABLE.c.to_height))
                .where(ARCHIVE_TABLE.c.chain_id.in_(list(found)))
                .group_by(ARCHIVE_TABLE.c.chain_id)
            )
        }
    for chain, height in sorted(found.items()):
        if archived.get(chain, 0) < height:
            return (
                f"chain {chain} has records up to height {height} in it, archived only to"
                f" {archived.get(chain, 0)}: no signed checkpoint covers the rest yet"
            )
    return None


async def archive_chains(
    engine: AsyncEngine,
    archive_dir: Path,
    *,
    before_ms: int,
    trusted: TrustedKeys,
    suite: str = "standard",
    chains: list[str] | None = None,
) -> list[ArchiveResult]:
    """Archive, per chain, the records older than `before_ms` up to the last signed checkpoint among them."""
    results = []
    for chain_id in chains if chains is not None else await chain_ids(engine):
        result = await archive_chain(engine, archive_dir, chain_id, before_ms=before_ms, trusted=trusted, suite=suite)
        if result is not None:
            results.append(result)
    return results


async def archive_chain(
    engine: AsyncEngine,
    archive_dir: Path,
    chain_id: str,
    *,
    before_ms: int,
    trusted: TrustedKeys,
    suite: str = "standard",
    whole: bool = False,
) -> ArchiveResult | None:
    """Archive one chain from its last archive: up to the last signed checkpoint among the records older than
    `before_ms`, whose rows are then deleted; or, `whole`, up to the first signed checkpoint at or after the last
    record older than `before_ms` (every such record archived), leaving the rows for their month to drop."""
    if len(trusted) == 0:
        raise ArchiveError("no trusted public key: an archive must end at a checkpoint whose signature verifies")
    archives = await list_archives(engine, chain_id)
    last = archives[-1] if archives else None
    seq = last["seq"] + 1 if last else 1
    start = last["to_height"] + 1 if last else 1
    start_hash = last["head_hash"] if last else GENESIS_HASH
    prev_digest = last["digest"] if last else ""
    async with engine.connect() as connection:
        if whole:
            cut = await _whole_cut(connection, chain_id, start, before_ms)
        else:
            cut = await _cut(connection, chain_id, start, before_ms)
    if cut is None:
        return None
    checkpoints = [cp for cp in await load_checkpoints(engine, chain_id, after=start - 1) if cp.height <= cut]
    directory = archive_dir / chain_id
    for orphan in directory.glob(f"{seq:06d}-*"):
        orphan.unlink()  # written by a run that crashed before registering it; its rows are still in the database
    path = directory / f"{seq:06d}-{start}-{cut}.jsonl.gz"
    writer = LineWriter(path, compress=True)
    count, head, first_ts, last_ts = 0, start_hash, 0, 0
    try:
        ranges = [{"chain_id": chain_id, "from_height": start, "to_height": cut, "start_hash": start_hash}]
        writer.write(
            header_line(
                "archive",
                chain_id=chain_id,
                seq=seq,
                prev_archive_digest=prev_digest,
                created_ms=now_ms(),
                chains=ranges,
            )
        )
        for checkpoint in checkpoints:
            writer.write(checkpoint_line(checkpoint))
        async for rows in iter_chain(engine, chain_id, after=start - 1):
            rows = [row for row in rows if row["height"] <= cut]
            written, last_hash, first, latest = write_records(writer, rows)
            count += written
            head = last_hash or head
            first_ts, last_ts = first_ts or first, latest or last_ts
            if not rows or rows[-1]["height"] >= cut:
                break
        writer.close()
    except BaseException:
        writer.abort()
        raise
    reports = verify_file(path, trusted, start={chain_id: (start, start_hash)})
    report = reports[0] if reports else None
    if report is None or not report.ok or report.head_height != cut or report.sealed_height != cut:
        path.rename(path.with_name(path.name + ".failed"))
        why = str(report.fault) if report is not None and report.fault else "it does not end at its signed checkpoint"
        raise ArchiveError(f"archive of {chain_id} heights {start}–{cut} does not verify, nothing deleted: {why}")
    digest = file_digest(path, suite)
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SET LOCAL msjx.audit_archiver = 'on'"))
        await connection.execute(
            insert(ARCHIVE_TABLE).values(
                chain_id=chain_id,
                seq=seq,
                from_height=start,
                to_height=cut,
                head_hash=head,
                first_ts_ms=first_ts,
                last_ts_ms=last_ts,
                file_name=path.name,
                digest=digest,
                created_ms=now_ms(),
            )
        )
        if not whole:
            await connection.execute(
                delete(AUDIT_TABLE).where(
                    AUDIT_TABLE.c.chain_id == chain_id, AUDIT_TABLE.c.height >= start, AUDIT_TABLE.c.height <= cut
                )
            )
    return ArchiveResult(chain_id, seq, start, cut, count, path, digest, removed=not whole)


def _sealed_rows(chain_id: str) -> Any:
    """Checkpoints of `chain_id` joined to the record they sign (a checkpoint whose row is gone cannot end an
    archive: the file must hold the record it names)."""
    return CHECKPOINT_TABLE.join(
        AUDIT_TABLE,
        and_(
            AUDIT_TABLE.c.chain_id == CHECKPOINT_TABLE.c.chain_id,
            AUDIT_TABLE.c.height == CHECKPOINT_TABLE.c.height,
        ),
    )


async def _cut(connection: AsyncConnection, chain_id: str, start: int, before_ms: int) -> int | None:
    """The last signed height among the records older than `before_ms`."""
    query = (
        select(func.max(CHECKPOINT_TABLE.c.height))
        .select_from(_sealed_rows(chain_id))
        .where(
            CHECKPOINT_TABLE.c.chain_id == chain_id, CHECKPOINT_TABLE.c.height >= start, AUDIT_TABLE.c.ts_ms < before_ms
        )
    )
    return (await connection.execute(query)).scalar()


async def _whole_cut(connection: AsyncConnection, chain_id: str, start: int, before_ms: int) -> int | None:
    """The first signed height at or after the chain's last record older than `before_ms` (None: none older, or
    not signed yet), so that an archive ending there holds every one of those records."""
    last = (
        await connection.execute(
            select(func.max(AUDIT_TABLE.c.height)).where(
                AUDIT_TABLE.c.chain_id == chain_id, AUDIT_TABLE.c.height >= start, AUDIT_TABLE.c.ts_ms < before_ms
            )
        )
    ).scalar()
    if last is None:
        return None
    query = (
        select(func.min(CHECKPOINT_TABLE.c.height))
        .select_from(_sealed_rows(chain_id))
        .where(CHECKPOINT_TABLE.c.chain_id == chain_id, CHECKPOINT_TABLE.c.height >= last)
    )
    return (await connection.execute(query)).scalar()
