"""Verifying chains in the database against their checkpoints, witness files and archive files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.files import AuditFileError, digest_suite, file_digest, scan, verify_file
from gateway.audit.rows import chain_ids, fetch_row, iter_chain, list_archives, load_checkpoints
from gateway.audit.scan import BLOCKS_PER_WORKER, ProvenVerifier, Run, ScanTarget, scan_chains, stitch
from gateway.audit.witness import read_witness
from security.audit_chain import GENESIS_HASH, PREV_FIELD, ChainFault, ChainReport
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
    workers: int = 1,
    blocks_per_worker: int = BLOCKS_PER_WORKER,
) -> list[ChainReport]:
    """Verify every chain (or `chains`): its archives, then its rows, against its checkpoints.

    On PostgreSQL the rows of all chains are first read in one scan in storage order (gateway/audit/scan.py), by up to
    `workers` processes; a chain that scan cannot prove intact is walked again in height order, which names its fault.
    """
    plans = []
    for chain_id in chains if chains is not None else await chain_ids(engine):
        witness = witness_dir / f"{chain_id}.checkpoints.jsonl" if witness_dir is not None else None
        plans.append(
            await _plan(
                engine, chain_id, trusted=trusted, archive_dir=archive_dir, witness=witness, skip_archives=skip_archives
            )
        )
    walking = {plan.chain_id: plan for plan in plans if isinstance(plan, _Plan)}
    runs: dict[str, list[Run]] = {}
    if walking and engine.dialect.name == "postgresql":
        targets = {
            chain_id: ScanTarget(plan.start_height, plan.verifier().checkpoint_heights)
            for chain_id, plan in walking.items()
        }
        runs, _ = await scan_chains(engine, targets, workers=workers, blocks_per_worker=blocks_per_worker)
    reports = []
    for plan in plans:
        if not isinstance(plan, _Plan):
            reports.append(plan)
            continue
        report = _proven(plan, runs[plan.chain_id]) if plan.chain_id in runs else None
        reports.append(report if report is not None else await walk_in_order(engine, plan))
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
    """One chain, its rows walked in height order (the walk that names a fault; see `verify_all`)."""
    plan = await _plan(
        engine, chain_id, trusted=trusted, archive_dir=archive_dir, witness=witness, skip_archives=skip_archives
    )
    return plan if isinstance(plan, ChainReport) else await walk_in_order(engine, plan, page=page)


@dataclass
class _Plan:
    """A chain whose rows are to be walked, from where its archives end, and what its archives gave."""

    chain_id: str
    start_height: int
    start_hash: str
    sealed_height: int | None
    checkpoints: list[Checkpoint]
    trusted: TrustedKeys | None
    archives: int
    archived_records: int
    notes: list[str]

    def verifier(self) -> ProvenVerifier:
        return ProvenVerifier(
            self.chain_id,
            start_height=self.start_height,
            start_hash=self.start_hash,
            checkpoints=self.checkpoints,
            trusted=self.trusted,
            sealed_height=self.sealed_height,
            presorted=True,
        )

    def report(self, report: ChainReport) -> ChainReport:
        return replace(
            report,
            records=report.records + self.archived_records,
            archives=self.archives,
            notes=tuple(self.notes),
            # archives verified: from genesis
            start_height=1 if self.archives and not self.notes else report.start_height,
        )


async def _plan(
    engine: AsyncEngine,
    chain_id: str,
    *,
    trusted: TrustedKeys | None,
    archive_dir: Path | None,
    witness: Path | None,
    skip_archives: bool,
) -> _Plan | ChainReport:
    """What is checked before the rows (revocations, archives): a report if that already fails, else the plan."""
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
    return _Plan(
        chain_id, start_height, start_hash, sealed, checkpoints, trusted, len(archives), archived_records, notes
    )


def _proven(plan: _Plan, runs: list[Run]) -> ChainReport | None:
    """The report of a chain the scan proved intact, or None when it did not (then the walk in order decides)."""
    proof = stitch(runs, plan.start_height, plan.start_hash)
    if proof is None:
        return None
    verifier = plan.verifier()
    verifier.accept(proof)
    report = verifier.finish()
    return plan.report(report) if report.ok else None


async def walk_in_order(engine: AsyncEngine, plan: _Plan, *, page: int = 5000) -> ChainReport:
    """Walk a chain's rows in height order, a page at a time; a fault is named with the rows around it."""
    chain_id, verifier = plan.chain_id, plan.verifier()
    async for rows in iter_chain(engine, chain_id, page=page, after=plan.start_height - 1):
        if not verifier.feed(rows):
            break
    found: dict[tuple[str, str], dict[str, Any] | None] = {}
    if verifier.failure is not None:
        for column, value in verifier.failure.lookups:
            row = await fetch_row(engine, chain_id, column, value)
            if row is None and column == PREV_FIELD and value != GENESIS_HASH:
                row = await fetch_row(engine, None, column, value)  # moved to another chain by a changed chain_id
            found[(column, value)] = row
    return plan.report(verifier.finish(lambda column, value: found.get((column, value))))


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
