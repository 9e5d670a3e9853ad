"""Witness files: each chain's signed checkpoints appended, fsynced, outside the database."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from gateway.settings import Settings
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
