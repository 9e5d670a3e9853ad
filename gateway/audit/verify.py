"""Verifying chains in the database against their checkpoints, witness files and archive files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.files import AuditFileError, digest_suite, file_digest, scan, verify_file
from gateway.audit.rows import chain_ids, fetch_row, iter_chain, list_archives, load_checkpoints
from gateway.audit.witness import read_witness
from security.audit_chain import GENESIS_HASH, PREV_FIELD, ChainFault, ChainReport, ChainVerifier
from security.checkpoints import Checkpoint, TrustedKeys
from security.key_trust import KeyTrust


async def verify_all(
    engine: AsyncEngine,
    *,
    trusted: TrustedKeys | None = None,
    archive_dir: Path | None = None,
    witness_dir: Path | None = None,
    chains: list[str] | None = None,
    skip_archives: bool = False,
) -> list[ChainReport]:
    """Verify every chain (or `chains`): its archives, then its rows, against its checkpoints."""
    reports = []
    for chain_id in chains if chains is not None else await chain_ids(engine):
        witness = witness_dir / f"{chain_id}.checkpoints.jsonl" if witness_dir is not None else None
        reports.append(
            await verify_chain_db(
                engine,
                chain_id,
                trusted=trusted,
                archive_dir=archive_dir,
                witness=witness,
                skip_archives=skip_archives,
            )
        )
    return reports


async def verify_chain_db(
    engine: AsyncEngine,
    chain_id: str,
    *,
    trusted: TrustedKeys | None = None,
    archive_dir: Path | None = None,
    witness: Path | None = None,
    skip_archives: bool = False,
    page: int = 5000,
) -> ChainReport:
    checkpoints = await load_checkpoints(engine, chain_id)
    if witness is not None:
        checkpoints += read_witness(witness)
    if isinstance(trusted, KeyTrust):
        problem = _revocation_problem(trusted, chain_id, checkpoints)
        if problem is not None:
            return _fault_report(chain_id, problem[0], "rehashed", problem[1])
    archives = await list_archives(engine, chain_id)
    start_height, start_hash, sealed, archived_records, notes = 1, GENESIS_HASH, None, 0, []
    if archives:
        last = archives[-1]
        if skip_archives or archive_dir is None:
            anchor = [cp for cp in checkpoints if cp.height == last["to_height"]]
            problem = _anchor_problem(anchor, last, trusted)
            if problem is not None:
                return _fault_report(chain_id, last["to_height"] + 1, "rehashed", problem, len(archives))
            notes.append(
                f"heights 1–{last['to_height']} are in {len(archives)} archive(s), not verified here;"
                f" started from the signed checkpoint at height {last['to_height']}"
            )
        else:
            archive_report = verify_archives(chain_id, archives, archive_dir, trusted, checkpoints)
            if not archive_report.ok:
                return archive_report
            archived_records = archive_report.records
        start_height, start_hash, sealed = last["to_height"] + 1, last["head_hash"], last["to_height"]
    verifier = ChainVerifier(
        chain_id,
        start_height=start_height,
        start_hash=start_hash,
        checkpoints=checkpoints,
        trusted=trusted,
        sealed_height=sealed,
        presorted=True,
    )
    async for rows in iter_chain(engine, chain_id, page=page, after=start_height - 1):
        if not verifier.feed(rows):
            break
    found: dict[tuple[str, str], dict[str, Any] | None] = {}
    if verifier.failure is not None:
        for column, value in verifier.failure.lookups:
            row = await fetch_row(engine, chain_id, column, value)
            if row is None and column == PREV_FIELD and value != GENESIS_HASH:
                row = await fetch_row(engine, None, column, value)  # moved to another chain by a changed chain_id
            found[(column, value)] = row
    report = verifier.finish(lambda column, value: found.get((column, value)))
    return replace(
        report,
        records=report.records + archived_records,
        archives=len(archives),
        notes=tuple(notes),
        start_height=1 if archives and not notes else report.start_height,  # archives verified: from genesis
    )


def _revocation_problem(trust: KeyTrust, chain_id: str, checkpoints: list[Checkpoint]) -> tuple[int, str] | None:
    """A key revoked while it had signed up to height H keeps those checkpoints valid only while the one at H, which
    the revocation recorded, is still there: without it a thief of the key could rewrite everything below H."""
    for standing in trust.standings.values():
        if not standing.revoked or standing.chain_id != chain_id or not standing.revoked_height:
            continue
        height = standing.revoked_height
        if not any(cp.height == height and cp.key_id == standing.key_id for cp in checkpoints):
            return 1, (
                f"the checkpoint at height {height} signed by {standing.key_id}, recorded when that key was revoked"
                f" {standing.revoked}, is gone: heights 1–{height} are covered by no signature that can be trusted"
            )
    return None


def _anchor_problem(anchor: list[Checkpoint], archive: Mapping[str, Any], trusted: TrustedKeys | None) -> str | None:
    if not anchor:
        return f"no checkpoint signs the end of archive {archive['seq']} (height {archive['to_height']})"
    for checkpoint in anchor:
        why = trusted.check(checkpoint) if trusted is not None else None
        if why is not None:
            return f"the checkpoint ending archive {archive['seq']} cannot be trusted: {why}"
        if checkpoint.head_hash != archive["head_hash"]:
            return f"archive {archive['seq']} is registered with a head its signed checkpoint does not name"
    return None


def _fault_report(chain_id: str, height: int, kind: str, detail: str, archives: int = 0) -> ChainReport:
    fault = ChainFault(chain_id, height, kind, detail)
    return ChainReport(chain_id, 0, GENESIS_HASH, fault, head_height=height - 1, archives=archives)


def verify_archives(
    chain_id: str,
    archives: list[dict[str, Any]],
    archive_dir: Path,
    trusted: TrustedKeys | None,
    checkpoints: list[Checkpoint],
) -> ChainReport:
    """Each archive file: present, unchanged (its digest), linked to the one before, and a verifying chain segment."""
    prev_digest, prev_head, prev_to, total = "", GENESIS_HASH, 0, 0
    for archive in archives:
        path = archive_dir / chain_id / archive["file_name"]
        start = archive["from_height"]
        if start != prev_to + 1:
            return _fault_report(
                chain_id, prev_to + 1, "missing", f"no archive holds heights {prev_to + 1}–{start - 1}"
            )
        if not path.exists():
            return _fault_report(chain_id, start, "missing", f"archive file {path} is missing")
        digest = file_digest(path, digest_suite(archive["digest"]))
        if digest != archive["digest"]:
            return _fault_report(chain_id, start, "changed", f"archive file {path} differs from what was archived")
        try:
            header = scan(path).header
            reports = verify_file(path, trusted, start={chain_id: (start, prev_head)})
        except AuditFileError as exc:
            return _fault_report(chain_id, start, "changed", str(exc))
        if header.get("prev_archive_digest", "") != prev_digest:
            return _fault_report(chain_id, start, "changed", f"archive {path.name} does not link to the one before it")
        report = next((r for r in reports if r.chain_id == chain_id), None)
        if report is None:
            return _fault_report(chain_id, start, "missing", f"archive {path.name} holds no records of {chain_id}")
        if not report.ok:
            assert report.fault is not None
            detail = f"{report.fault.detail} (in archive {path.name})"
            return _fault_report(chain_id, report.fault.height, report.fault.kind, detail)
        if report.head_height != archive["to_height"] or report.sealed_height != archive["to_height"]:
            return _fault_report(
                chain_id,
                report.head_height + 1,
                "truncated",
                f"archive {path.name} should end at the signed height {archive['to_height']}",
            )
        prev_digest, prev_head, prev_to = digest, report.head_hash, archive["to_height"]
        total += report.records
    return ChainReport(chain_id, total, prev_head, None, head_height=prev_to, sealed_height=prev_to)
