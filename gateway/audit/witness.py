"""Witness files: each chain's signed checkpoints appended, fsynced, outside the database; and the start-up check
that the database still holds the chain as this node signed it."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.rows import ARCHIVE_TABLE, AUDIT_TABLE
from gateway.settings import Settings
from gateway.storage.reachability import StartupFailure
from security.checkpoints import Checkpoint

log = logging.getLogger("msjx.audit")


def witness_path(settings: Settings, chain_id: str) -> Path:
    return settings.witness_dir / f"{chain_id}.checkpoints.jsonl"


def append_witness(path: Path, checkpoint: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as stream:
        stream.write(orjson.dumps(checkpoint.to_dict()) + b"\n")
        stream.flush()
        os.fsync(stream.fileno())


def read_witness(path: Path) -> list[Checkpoint]:
    """Checkpoints of the witness file; a torn last line (a crash mid-append) is skipped."""
    if not path.exists():
        return []
    checkpoints = []
    for line in path.read_bytes().splitlines():
        try:
            checkpoints.append(Checkpoint.from_dict(orjson.loads(line)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("skipping an unreadable line of %s", path)
    return checkpoints


# Far more than one line (about 250 bytes): the end of the file holds the newest checkpoint whatever its size.
_TAIL_BYTES = 64 * 1024


class ChainBehindWitness(StartupFailure):
    """The database does not hold this node's chain as the node signed it: appending would sign a second history."""


def last_witnessed(path: Path) -> Checkpoint | None:
    """The newest readable checkpoint of a witness file, read from its end: the file grows by a line a checkpoint
    for as long as the node lives."""
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, stream.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = stream.read()
    except FileNotFoundError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            return Checkpoint.from_dict(orjson.loads(line))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a torn last line (a crash mid-append), or the cut first line of the tail
    return None


async def check_against_witness(engine: AsyncEngine, chain_id: str, path: Path) -> None:
    """Refuse to write on a chain the database holds shorter than this node signed it (restored from an earlier
    backup, or records deleted), or whose record at the signed height is another: the node would sign heights it
    already signed, with other content, under the same key. That happened silently after a restore, and `audit
    verify` then called the records written since `rehashed`."""
    signed = await asyncio.to_thread(last_witnessed, path)
    if signed is None:
        return
    records = AUDIT_TABLE.c
    async with engine.connect() as connection:
        held = (await connection.execute(select(func.max(records.height)).where(records.chain_id == chain_id))).scalar()
        archived = (
            await connection.execute(
                select(func.max(ARCHIVE_TABLE.c.to_height)).where(ARCHIVE_TABLE.c.chain_id == chain_id)
            )
        ).scalar()
        recorded = (
            await connection.execute(
                select(records.record_hash).where(records.chain_id == chain_id, records.height == signed.height)
            )
        ).scalar()
    height = max(held or 0, archived or 0)
    way_out = (
        "restore the missing records, or start this node under a new MSJX_NODE_ID (a new chain; `audit verify` keeps"
        f" reporting {chain_id} as it is); if this is a new database on purpose, move {path} aside"
    )
    if signed.height > height:
        raise ChainBehindWitness(
            f"audit chain {chain_id}: the database holds it through height {height}, but this node signed it through"
            f" height {signed.height} ({path}): records {height + 1}–{signed.height} are gone (a database restored"
            f" from an earlier backup, or records deleted), and writing on would sign those heights again; {way_out}"
        )
    if recorded is not None and recorded != signed.head_hash:
        raise ChainBehindWitness(
            f"audit chain {chain_id}: the record at height {signed.height} in the database is not the one this node"
            f" signed ({path}): the chain was changed (run `msjx-gateway audit verify`); {way_out}"
        )
