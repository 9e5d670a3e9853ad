"""`msjx-gateway audit`: verify the chains, export and archive records, search and open records as an officer."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from gateway.cli.common import (
    WHEN_HELP,
    DataDir,
    GatewayUrl,
    OfficerCaller,
    OfficerKey,
    ReasonCategoryOption,
    beijing,
    cli_settings,
    epoch_ms,
    fail,
    officer_request,
    parse_when,
    run_engine,
)
from gateway.clock import SYSTEM_CLOCK

audit_app = typer.Typer(help="The audit log: verify, export, archive.", no_args_is_help=True)


STANDING_TEXT = {
    "local": "trusted key file",
    "pinned": "pinned",
    "self-registered": "self-registered, not pinned",
    "carried": "carried, not pinned",
}


def _key_line(trust: Any, chain_id: str, local_text: str) -> tuple[str, bool]:
    """`keys: …` for a chain: which keys signed its checkpoints and their standing; True when one is pinned/local."""
    used = trust.used_by(chain_id) if trust is not None and hasattr(trust, "used_by") else []
    if not used:
        return "", False
    parts = []
    for standing in used:
        text = local_text if standing.standing == "local" else STANDING_TEXT[standing.standing]
        if standing.revoked:
            text += f"; revoked {standing.revoked}, accepted through height {standing.revoked_height or 0}"
        parts.append(f"{standing.key_id} ({text})")
    trusted = all(standing.standing in ("local", "pinned") for standing in used)
    return "keys: " + ", ".join(parts), trusted


def _print_reports(
    reports: list[Any],
    *,
    require_sealed: bool = False,
    trust: Any = None,
    local_text: str = "trusted key file",
    require_pinned: bool = False,
) -> bool:
    """One line per chain, and the keys that signed it; a fault goes to stderr. True when every chain verified."""
    good = True
    for report in reports:
        if not report.ok:
            good = False
            typer.echo(f"FAILED {report.fault}", err=True)
            continue
        sealing = (
            f"signed through height {report.sealed_height}" if report.signatures_checked else "signatures NOT checked"
        )
        if report.unsealed:
            sealing += f" ({report.unsealed} newer record{'s' if report.unsealed != 1 else ''} not yet signed)"
        archived = f", {report.archives} archive(s)" if report.archives else ""
        span = f"heights {report.start_height}–{report.head_height}" if report.start_height > 1 else ""
        typer.echo(
            f"chain {report.chain_id}: {report.records} records intact{archived}{', ' + span if span else ''},"
            f" head {report.head_hash[:16]}…, {sealing}"
        )
        keys, pinned = _key_line(trust, report.chain_id, local_text)
        if keys:
            typer.echo(f"  {keys}")
        for note in report.notes:
            typer.echo(f"  note: {note}")
        if require_sealed and report.unsealed:
            good = False
            typer.echo(
                f"FAILED chain {report.chain_id}: heights {report.sealed_height + 1}–{report.head_height} are covered"
                " by no signature that verifies, so they prove nothing",
                err=True,
            )
        elif require_pinned and keys and not pinned:
            good = False
            typer.echo(
                f"FAILED chain {report.chain_id}: its checkpoints verify only under keys nobody pinned; pin them"
                + (" with --pubkey" if local_text.startswith("pinned") else " (`msjx-gateway keys nodes pin`)"),
                err=True,
            )
    return good


@audit_app.command("verify")
def audit_verify(
    file: Annotated[
        Path | None, typer.Option("--file", help="verify an export or archive file offline instead of the database")
    ] = None,
    pubkey: Annotated[
        list[Path],
        typer.Option("--pubkey", help="a node's checkpoint public key (PEM) to trust; repeat for several nodes"),
    ] = [],  # noqa: B006
    chain: Annotated[list[str], typer.Option("--chain", help="only this chain (node id); repeatable")] = [],  # noqa: B006
    skip_archives: Annotated[
        bool, typer.Option("--skip-archives", help="start after the last archive, from its signed checkpoint")
    ] = False,
    require_pinned: Annotated[
        bool,
        typer.Option("--require-pinned", help="fail a chain whose checkpoints verify only under self-registered keys"),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="processes reading the rows on PostgreSQL (default: one per CPU core)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Verify the audit log: every chain in the database (archives included), or one exported file.

    Exit 0 when intact, 1 naming the first bad height and the kind of fault (changed, missing, reordered,
    inserted, truncated, rehashed). Checkpoints must be signed by a key the verifier knows: this node's own, the
    PEM files in <data-dir>/keys/trusted/, every --pubkey, and every node key registered in the database (each node
    registers its own when it first starts); each chain's line says which keys signed it and whether they were
    pinned or only self-registered. A file trusts only --pubkey: the keys it carries are reported as "carried,
    not pinned", and every record in it must be covered by a signature that verifies.
    """
    from gateway.audit.files import AuditFileError, scan, verify_file
    from gateway.audit.node_keys import offline_trust
    from gateway.audit.signer import local_keys, node_trust
    from gateway.audit.verify import verify_all
    from security.keys import KeyFormatError

    if file is not None:
        try:
            pinned = local_keys(None, pubkey)
            carried = scan(file).header.get("node_keys") or []
            trust = offline_trust(pinned, carried if isinstance(carried, list) else [])
            if len(trust) == 0:
                raise fail(
                    "--file needs --pubkey: a file proves nothing without the signer's public key (and this one"
                    " carries none)"
                )
            reports = verify_file(file, trust)
        except (KeyFormatError, AuditFileError) as exc:
            raise fail(str(exc)) from None
        reports = [report for report in reports if not chain or report.chain_id in chain]
        if not reports:
            raise fail(f"{file} holds no records" + (f" of {', '.join(chain)}" if chain else ""))
        good = _print_reports(
            reports, require_sealed=True, trust=trust, local_text="pinned with --pubkey", require_pinned=True
        )
        if not good:
            raise typer.Exit(1)
        return
    settings = cli_settings(data_dir)

    async def work(engine: Any) -> tuple[Any, list[Any]]:
        trust = await node_trust(engine, settings, pubkey)
        if len(trust) == 0:
            typer.echo("warning: no trusted public key here; checkpoint signatures are NOT checked", err=True)
        reports = await verify_all(
            engine,
            trusted=trust if len(trust) else None,
            archive_dir=settings.archive_dir,
            witness_dir=settings.witness_dir,
            chains=chain or None,
            skip_archives=skip_archives,
            workers=workers or os.cpu_count() or 1,
        )
        return trust, reports

    try:
        trust, reports = run_engine(settings, work)
    except KeyFormatError as exc:
        raise fail(str(exc)) from None
    if not reports:
        typer.echo("no audit records yet")
        return
    if not _print_reports(reports, trust=trust, require_pinned=require_pinned):
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    file: Annotated[Path, typer.Argument(help="where to write the JSON Lines (a .gz name compresses)")],
    from_: Annotated[str, typer.Option("--from", help=f"start, inclusive: {WHEN_HELP}")],
    to: Annotated[str, typer.Option("--to", help=f"end, exclusive: {WHEN_HELP}")],
    chain: Annotated[list[str], typer.Option("--chain", help="only this chain (node id); repeatable")] = [],  # noqa: B006
    data_dir: DataDir = None,
) -> None:
    """Export records of a time range with the checkpoints that sign them, for offline verification.

    The export runs on to the next checkpoint, so every record in it is covered by a signature. Payloads stay
    sealed. Verify it with `msjx-gateway audit verify --file FILE --pubkey NODE.pub.pem`.
    """
    from gateway.audit.archive import export_records
    from gateway.audit.files import AuditFileError
    from gateway.sharing.obligations import register_entries

    start, end = epoch_ms(parse_when(from_, "--from")), epoch_ms(parse_when(to, "--to"))
    if end <= start:
        raise fail("--to must be later than --from")
    settings = cli_settings(data_dir)

    async def export(engine: Any) -> Any:
        register = await register_entries(engine, start, end)
        return await export_records(engine, file, from_ms=start, to_ms=end, chains=chain or None, register=register)

    try:
        exported = run_engine(settings, export)
    except AuditFileError as exc:
        raise fail(str(exc)) from None
    if not exported:
        typer.echo(f"no records in that range; {file} holds only a header")
    for item in exported:
        sealed = "" if item.sealed else " (the newest are not signed yet: export again after the next checkpoint)"
        typer.echo(
            f"chain {item.chain_id}: {item.records} records, heights {item.from_height}–{item.to_height},"
            f" {item.checkpoints} checkpoints{sealed}"
        )
    entries = _register_count(file)
    if entries:
        typer.echo(f"register of use, storage and destruction: {entries} entries")
    typer.echo(f"wrote {file}")


def _register_count(file: Path) -> int:
    from gateway.audit.files import iter_lines

    for _, item in iter_lines(file):
        return int(item.get("register_entries") or 0)  # the header comes first
    return 0


@audit_app.command("archive")
def audit_archive(
    before: Annotated[
        str | None,
        typer.Option("--before", help=f"archive records older than this (default: now − retention): {WHEN_HELP}"),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="allow a date inside the retention period (MSJX_AUDIT_RETENTION_DAYS)")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Move old records into hash-linked archive files under <data-dir>/archive/; rows leave the database only
    after their archive file has been read back and verified. On PostgreSQL they leave by whole months (a
    partition dropped): the month the date falls in stays until it has ended."""
    from gateway.audit.archive import ArchiveError, archive_log
    from gateway.audit.files import AuditFileError
    from gateway.audit.signer import node_trust

    settings = cli_settings(data_dir)
    now = SYSTEM_CLOCK.now()
    limit = now - timedelta(days=settings.audit_retention_days)
    cutoff = parse_when(before, "--before") if before else limit
    if cutoff > limit and not force:
        raise fail(
            f"--before {beijing(cutoff)} is inside the retention period ({settings.audit_retention_days} days,"
            f" until {beijing(limit)}); records stay in the database that long. Use --force to archive anyway."
        )

    async def work(engine: Any) -> Any:
        trusted = await node_trust(engine, settings)
        return await archive_log(
            engine, settings.archive_dir, before_ms=epoch_ms(cutoff), trusted=trusted, suite=settings.crypto_suite
        )

    try:
        run = run_engine(settings, work)
    except (ArchiveError, AuditFileError) as exc:  # rows leave only once their file is written and read back
        raise fail(str(exc), 1) from None
    if run.partitioned:
        through = datetime.fromtimestamp(run.through_ms / 1000, UTC)
        typer.echo(
            f"PostgreSQL keeps the log in monthly partitions: records before {beijing(through)} (the whole months"
            f" before {beijing(cutoff)}) are archived; later ones wait for their month to end"
        )
    if not run.archives and not run.dropped:
        typer.echo(f"nothing to archive before {beijing(cutoff)}")
    for result in run.archives:
        where = "removed from the database" if result.removed else "rows leave the database with their month"
        typer.echo(
            f"chain {result.chain_id}: archive {result.seq} holds heights {result.from_height}–{result.to_height}"
            f" ({result.records} records) in {result.path}, {result.digest[:23]}…; {where}"
        )
    for partition in run.dropped:
        typer.echo(f"month {partition.month}: partition {partition.name} detached and dropped")
    for why in run.waiting:
        typer.echo(f"month {why}")


@audit_app.command("search")
def audit_search(
    key: OfficerKey,
    caller: OfficerCaller,
    from_: Annotated[str | None, typer.Option("--from", help=f"at or after: {WHEN_HELP}")] = None,
    to: Annotated[str | None, typer.Option("--to", help=f"before: {WHEN_HELP}")] = None,
    event: Annotated[str | None, typer.Option(help="e.g. service.invoke, audit.payload.read")] = None,
    category: ReasonCategoryOption = None,
    of_caller: Annotated[str | None, typer.Option("--of-caller", help="records of this caller id")] = None,
    decision: Annotated[str | None, typer.Option(help="allowed, refused or failed")] = None,
    target: Annotated[str | None, typer.Option(help="officer actions on this record id")] = None,
    limit: Annotated[int, typer.Option(help="records per page (1-500)")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON instead of lines")] = False,
    url: GatewayUrl = None,
) -> None:
    """Search the audit log through the officer API (newest first; times in Beijing time). The search is audited."""
    params = {
        "from": parse_when(from_, "--from").isoformat() if from_ else None,
        "to": parse_when(to, "--to").isoformat() if to else None,
        "event": event,
        "category": category,
        "caller": of_caller,
        "decision": decision,
        "target": target,
        "limit": str(limit),
    }
    query = "&".join(f"{name}={quote(value)}" for name, value in params.items() if value is not None)
    answer = officer_request(key, caller, url, "GET", f"/v1/audit/records?{query}")
    if as_json:
        typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))
        return
    for record in answer["records"]:
        typer.echo(_record_line(record))
    if answer.get("next_cursor"):
        typer.echo(f"(more: narrow --from/--to, or raise --limit; cursor {answer['next_cursor']})")


def _record_line(record: dict[str, Any]) -> str:
    from schemas.times import beijing_ms

    what = record["event"]
    if record.get("service"):
        what += f" {record['service']}/{record.get('operation') or ''}"
    line = (
        f"{beijing_ms(int(record['ts_ms']), 'milliseconds')}  {record['record_id']}  {what}  "
        f"{record.get('caller_id') or '-'}  {record['decision']} {record['status_code']}"
    )
    if record.get("reason_code"):
        line += f" {record['reason_code']}"
    if record.get("target_id"):
        line += f"  on {record['target_id']}"
    if record.get("reason_category"):
        line += f"  [{record['reason_category']} {record.get('reason_ref') or ''}] {record.get('reason') or ''}"
    return line


@audit_app.command("open")
def audit_open(
    record_id: Annotated[str, typer.Argument(help="the record whose sealed payloads to read")],
    key: OfficerKey,
    caller: OfficerCaller,
    category: ReasonCategoryOption = None,
    reference: Annotated[str | None, typer.Option(help="the case or ticket number this reading serves")] = None,
    reason: Annotated[str | None, typer.Option(help="why: at least 10 non-blank characters")] = None,
    part: Annotated[list[str], typer.Option("--part", help="request or response (default: both; repeat)")] = [],  # noqa: B006
    url: GatewayUrl = None,
) -> None:
    """Read a record's decrypted payloads, stating why; the reading is itself recorded, with its reason."""
    body: dict[str, Any] = {"category": category, "reference": reference, "reason": reason}
    body = {name: value for name, value in body.items() if value is not None}  # the gateway names what is missing
    if part:
        body["parts"] = part
    answer = officer_request(
        key, caller, url, "POST", f"/v1/audit/records/{quote(record_id, safe='')}/payload", json=body
    )
    typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))
