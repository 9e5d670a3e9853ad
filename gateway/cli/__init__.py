"""The `msjx-gateway` command: serve (and the demo), database, callers, grants, audit, keys, calendar, a call."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer

from gateway.cli.calendar import calendar_app
from gateway.http.problems import Problem
from gateway.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="msjx-gateway: the data-sharing gateway for 免申即享 platforms.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
callers_app = typer.Typer(help="Callers and their public keys.", no_args_is_help=True)
grants_app = typer.Typer(
    help="Grants (the full request workflow is in the sharing-requests API).", no_args_is_help=True
)
audit_app = typer.Typer(help="The audit log: verify, export, archive.", no_args_is_help=True)
upstreams_app = typer.Typer(
    help="District systems registered at runtime from a WSDL or OpenAPI document.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="Audit keys: data keys (rotate, destroy), the master key, the signing key; and a new caller's key pair.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(upstreams_app, name="upstreams")
app.add_typer(callers_app, name="callers")
app.add_typer(grants_app, name="grants")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(calendar_app, name="calendar")

T = TypeVar("T")
# How `serve` runs uvicorn; `make bench` measures these (docs/performance.md), and its Python floor uses them too.
# proxy_headers off: uvicorn would believe X-Forwarded-For/-Proto from 127.0.0.1 whatever MSJX_TRUSTED_PROXIES says;
# the gateway applies that one rule itself (gateway/http/forwarded.py), to the client address and the signed URI alike.
SERVER_OPTIONS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "access_log": False, "proxy_headers": False}
WHEN_HELP = "YYYY-MM-DD or a time such as 2026-12-05T09:30, Beijing time unless it has an offset (Z, +08:00)"
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="overrides MSJX_DATA_DIR (default: var)")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise _fail(str(exc)) from None


def configure_logging(level: str) -> None:
    from security.masking import install_log_masking

    install_log_masking()
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _run_registry(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run one registry action in a session after migrating; a refusal prints its detail and exits 1."""
    from gateway.storage import db

    db.upgrade(settings)

    async def main() -> T:
        engine = db.create_engine(settings)
        try:
            async with db.sessionmaker(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except Problem as problem:
        raise _fail(f"{problem.code}: {problem.detail}", 1) from None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@app.command()
def serve(
    demo: Annotated[bool, typer.Option("--demo", help="start the simulators and seed demo callers and grants")] = False,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            help="worker processes on the one port, each a node with its own audit chain <node-id>-<i>;"
            " more than 1 needs PostgreSQL and Redis (SIGHUP restarts them one at a time)"
        ),
    ] = 1,
    data_dir: DataDir = None,
) -> None:
    """Serve the gateway (migrating the database first)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.server import heap
    from gateway.server.protocol import guarded_protocol
    from gateway.server.workers import WorkersRefused, check_workers
    from gateway.storage import db
    from gateway.storage.reachability import check_redis

    settings = _settings(data_dir)
    try:
        check_workers(settings, workers)
    except WorkersRefused as exc:
        raise _fail(str(exc)) from None
    configure_logging(settings.log_level)
    lock = _lock_data_dir(settings, host, port)
    # Until uvicorn takes over the signals, make SIGTERM unwind like Ctrl-C so the simulators child is stopped.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    simulators = None
    announcement: list[str] = []
    try:
        # Redis down would otherwise surface inside uvicorn's start-up as a traceback; the database is checked by
        # db.upgrade. Both failures are one line naming the setting (gateway/storage/reachability.py), exit 2.
        asyncio.run(check_redis(settings))
        if demo:
            from gateway.demo import setup as demo_module
            from gateway.runtime import build_adapters
            from simulators.enterprises import DEMO_USCC

            simulators, urls = demo_module.start_simulators(data_dir=settings.data_dir / "simulators")
            settings = settings.model_copy(update={"upstream_urls": {**urls, **settings.upstream_urls}})
            db.upgrade(settings)
            listing = asyncio.run(demo_module.seed(settings, build_adapters(settings)))
            announcement = [
                f"msjx-gateway demo on http://{host}:{port}  (API docs: http://{host}:{port}/docs)",
                f"simulators: {', '.join(f'{name} {url}' for name, url in urls.items())}",
                f"demo callers and keys: {settings.data_dir / 'demo' / 'callers.json'}",
                "try, in another shell:",
                "  " + demo_module.call_line(port, listing, DEMO_USCC, host),
            ]
        else:
            db.upgrade(settings)

        def on_ready() -> None:
            heap.settle()
            if announcement:
                typer.echo("\n".join(announcement))

        if workers > 1:
            _supervise(settings, workers, host, port, lambda: on_ready() if announcement else None)
            return
        uvicorn.run(
            create_app(settings, on_ready=on_ready),
            host=host,
            port=port,
            log_level=settings.log_level,
            # The same server, with bounds on request heads, slow clients and connections (gateway/server/protocol.py).
            **{**SERVER_OPTIONS, "http": guarded_protocol(settings)},
        )
    finally:
        if simulators is not None:
            simulators.terminate()
            simulators.wait(timeout=10)
        lock.release()


def _supervise(settings: Settings, workers: int, host: str, port: int, announce: Callable[[], None]) -> None:
    """`serve --workers N`: make the keys the workers share (or each own) here, so N first starts do not race to
    create them, then run the workers on one socket until a signal (gateway/server/workers.py)."""
    from gateway.audit.keys import open_keyring
    from gateway.audit.log import load_signer
    from gateway.server.workers import Supervisor, bind, worker_settings
    from gateway.storage import db

    async def prepare() -> None:
        engine = db.create_engine(settings)
        try:
            await open_keyring(settings, engine)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    for index in range(workers):
        load_signer(worker_settings(settings, index))
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror}", 1) from None
    # uvicorn takes SIGTERM from the workers; here the supervisor's own handlers replace the unwinding one.
    try:
        Supervisor(settings, workers, sock, SERVER_OPTIONS, announce).run()
    finally:
        sock.close()


def _lock_data_dir(settings: Settings, host: str, port: int) -> Any:
    """One gateway per data dir: a second `serve` on it stops here with one line naming the running one."""
    from gateway.server.datadir_lock import DataDirBusy, DataDirLock

    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire(host, port)
    except DataDirBusy as exc:
        raise _fail(str(exc), 1) from None
    return lock


@app.command()
def simulators(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    credit_port: Annotated[int, typer.Option(help="credit platform port (0: any free port)")] = 0,
    golden_tax_port: Annotated[int, typer.Option(help="Golden Tax III (SOAP) port (0: any free port)")] = 0,
    market_port: Annotated[int, typer.Option(help="market registration port (0: any free port)")] = 0,
    stop_on_stdin_close: Annotated[
        bool, typer.Option("--stop-on-stdin-close", help="exit when standard input closes (a parent died)")
    ] = False,
    treasury_port: Annotated[int, typer.Option(help="treasury port (0: any free port)")] = 0,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="state of durable simulators (default: <MSJX_DATA_DIR>/simulators)"),
    ] = None,
) -> None:
    """Run the simulated upstream systems; prints their URLs as one JSON line."""
    from simulators.runner import serve as serve_simulators
    from simulators.treasury import default_data_dir

    ports = {"credit": credit_port, "golden-tax": golden_tax_port, "market": market_port, "treasury": treasury_port}
    asyncio.run(serve_simulators(host, ports, data_dir or default_data_dir(), stop_on_stdin_close=stop_on_stdin_close))


@app.command()
def demo(
    url: Annotated[
        str | None,
        typer.Option(help="a running `serve --demo` (default: the one serving --data-dir, else start one)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the 免申即享 demo: a 名单类 and a 条件类 policy through the gateway, then verify the audit chain."""
    from gateway.demo.platform import DemoError, run_demo

    settings = _settings(data_dir)
    try:
        status = run_demo(settings, url, typer.echo)
    except DemoError as exc:
        raise _fail(str(exc), 1) from None
    raise typer.Exit(status)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Migrate the database to the newest schema."""
    from gateway.storage import db

    settings = _settings(data_dir)
    db.upgrade(settings)
    typer.echo("database is at the newest schema")


@callers_app.command("add")
def callers_add(
    caller_id: Annotated[str, typer.Argument(help="caller id, e.g. platform")],
    name: Annotated[str, typer.Option(help="display name")],
    department: Annotated[str, typer.Option(help="department the caller belongs to")],
    role: Annotated[list[str], typer.Option("--role", help="platform, department, officer, coordinator or admin")],
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Ed25519 or SM2 public key file (PEM; SM2 also as hex of the point)"),
    ] = None,
    key_id: Annotated[str | None, typer.Option(help="key id (default: <caller>.<fingerprint>)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a caller, optionally with its first public key."""
    from pydantic import ValidationError

    from gateway.access import callers as registry
    from schemas.api import CallerIn, KeyIn
    from security.keys import KeyFormatError, key_id_for, load_public_key

    keys = []
    if public_key is not None:
        try:
            text = public_key.read_text()
            key = load_public_key(text)
        except (OSError, KeyFormatError) as exc:
            raise _fail(f"--public-key: {exc}") from None
        keys.append(KeyIn(key_id=key_id or key_id_for(caller_id, key), public_key=text))
    try:
        body = CallerIn(caller_id=caller_id, name=name, department=department, roles=role, keys=keys)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    out = _run_registry(_settings(data_dir), lambda session: registry.add_caller(session, body))
    typer.echo(out.model_dump_json(indent=2))


@callers_app.command("list")
def callers_list(data_dir: DataDir = None) -> None:
    """List callers and their keys."""
    from gateway.access import callers as registry

    callers = _run_registry(_settings(data_dir), registry.list_callers)
    for caller in callers:
        keys = ", ".join(f"{key.key_id} ({key.status})" for key in caller.keys) or "no keys"
        typer.echo(f"{caller.caller_id:<16} {','.join(caller.roles):<24} {caller.department}  keys: {keys}")


@callers_app.command("revoke-key")
def callers_revoke_key(
    caller_id: Annotated[str, typer.Argument()],
    key_id: Annotated[str, typer.Argument()],
    data_dir: DataDir = None,
) -> None:
    """Revoke a caller's key; every node refuses it within a second."""
    from gateway.access import callers as registry

    out = _run_registry(_settings(data_dir), lambda session: registry.revoke_key(session, caller_id, key_id))
    typer.echo(f"key {out.key_id} is {out.status}")


@grants_app.command("add")
def grants_add(
    caller_id: Annotated[str, typer.Argument()],
    service: Annotated[str, typer.Argument()],
    operation: Annotated[str, typer.Argument()],
    purpose: Annotated[str, typer.Option(help="purpose code")],
    field: Annotated[list[str], typer.Option("--field", help="a field the grant returns (repeat)")],
    days: Annotated[int, typer.Option(help="validity in days from now")] = 365,
    data_dir: DataDir = None,
) -> None:
    """Issue a grant directly (operators; departments use the sharing-request workflow)."""
    from gateway.access import callers as registry
    from gateway.runtime import build_adapters
    from schemas.api import GrantIn

    settings = _settings(data_dir)
    _require_upstream_url(settings, service)
    body = GrantIn(
        caller_id=caller_id,
        service=service,
        operation=operation,
        purpose=purpose,
        fields=field,
        valid_to=datetime.now(UTC) + timedelta(days=days),
    )

    async def work(session: Any) -> Any:
        from gateway.upstreams.registry import registered_adapters

        adapters = {**build_adapters(settings), **await registered_adapters(session)}
        return await registry.add_grant(session, body, adapters)

    out = _run_registry(settings, work)
    typer.echo(out.model_dump_json(indent=2))


def _require_upstream_url(settings: Settings, service: str) -> None:
    """A built-in service is offered only where MSJX_UPSTREAM_URLS gives its URL: say so, not just "known: []"."""
    from gateway.upstreams.registry import BUILT_IN

    if service in BUILT_IN and service not in settings.upstream_urls:
        raise _fail(
            f"unknown_service: this node has no URL for {service!r}: set MSJX_UPSTREAM_URLS (the same on every node),"
            f""" e.g. '{{"{service}": "http://{service}.example:9101"}}', then add the grant""",
            1,
        )


@grants_app.command("list")
def grants_list(data_dir: DataDir = None) -> None:
    """List grants."""
    from gateway.access import callers as registry

    for grant in _run_registry(_settings(data_dir), registry.list_grants):
        state = f"until {_beijing(grant.valid_to)[:16]}" if grant.status == "active" else grant.status
        delivery = "" if grant.delivery_state == "not_applicable" else f"  delivery: {grant.delivery_state}"
        typer.echo(
            f"{grant.grant_id}  {grant.caller_id:<12} {grant.service}/{grant.operation:<20} "
            f"{grant.purpose:<14} {state:<23} fields: {','.join(grant.fields)}{delivery}"
        )


@grants_app.command("revoke")
def grants_revoke(grant_id: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Revoke a grant; every node refuses calls under it within a second."""
    from gateway.access import callers as registry

    out = _run_registry(_settings(data_dir), lambda session: registry.revoke_grant(session, grant_id))
    typer.echo(f"grant {out.grant_id} revoked at {_beijing(out.revoked_at)}")


def _grant_change(data_dir: Path | None, grant_id: str, change: str, body: Any) -> Any:
    """Suspend or resume as the operator (an admin), through the same workflow and history as the API."""
    from gateway.access import callers as registry
    from gateway.sharing import obligations
    from gateway.sharing.states import Actor

    operator = Actor("operator", None, frozenset({"admin"}))
    act = obligations.suspend if change == "suspend" else obligations.resume

    async def work(session: Any) -> Any:
        now = datetime.now(UTC)
        grant, _ = await act(session, operator, grant_id, body, now)
        return registry.grant_out(grant, now)

    return _run_registry(_settings(data_dir), work)


@grants_app.command("suspend")
def grants_suspend(
    grant_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option(help="why: the misuse found (recorded, shown in refusals)")],
    data_dir: DataDir = None,
) -> None:
    """Suspend a grant for misuse: calls under it are refused with grant_suspended until it is resumed."""
    from schemas.sharing import SuspendIn

    out = _grant_change(data_dir, grant_id, "suspend", SuspendIn(reason=reason))
    typer.echo(f"grant {out.grant_id} suspended at {out.suspended_at}: {out.suspend_reason}")


@grants_app.command("resume")
def grants_resume(
    grant_id: Annotated[str, typer.Argument()],
    reason: Annotated[str | None, typer.Option(help="why it may be used again")] = None,
    data_dir: DataDir = None,
) -> None:
    """End a grant's suspension; calls under it are served again."""
    from schemas.sharing import ResumeIn

    out = _grant_change(data_dir, grant_id, "resume", ResumeIn(reason=reason))
    typer.echo(f"grant {out.grant_id} resumed ({out.status})")


def _when(text: str, option: str) -> datetime:
    """A date (from 00:00 Beijing time), a time without an offset (Beijing time) or a time with an offset."""
    from schemas.times import parse_beijing

    try:
        return parse_beijing(text)
    except ValueError as exc:
        raise _fail(f"{option}: {exc}") from None


def _beijing(moment: datetime | None) -> str:
    """A stored time for people: Beijing time with its offset (the database keeps UTC; naive values are UTC)."""
    from schemas.times import beijing_text

    if moment is None:
        return "-"
    return beijing_text(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _run_engine(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(engine)` on a fresh engine (after migrating), disposing of it afterwards."""
    from gateway.storage import db

    db.upgrade(settings)

    async def main() -> T:
        engine = db.create_engine(settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


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
    from gateway.audit.log import local_keys, node_trust, verify_all
    from gateway.audit.node_keys import offline_trust
    from security.keys import KeyFormatError

    if file is not None:
        try:
            pinned = local_keys(None, pubkey)
            carried = scan(file).header.get("node_keys") or []
            trust = offline_trust(pinned, carried if isinstance(carried, list) else [])
            if len(trust) == 0:
                raise _fail(
                    "--file needs --pubkey: a file proves nothing without the signer's public key (and this one"
                    " carries none)"
                )
            reports = verify_file(file, trust)
        except (KeyFormatError, AuditFileError) as exc:
            raise _fail(str(exc)) from None
        reports = [report for report in reports if not chain or report.chain_id in chain]
        if not reports:
            raise _fail(f"{file} holds no records" + (f" of {', '.join(chain)}" if chain else ""))
        good = _print_reports(
            reports, require_sealed=True, trust=trust, local_text="pinned with --pubkey", require_pinned=True
        )
        if not good:
            raise typer.Exit(1)
        return
    settings = _settings(data_dir)

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
        )
        return trust, reports

    try:
        trust, reports = _run_engine(settings, work)
    except KeyFormatError as exc:
        raise _fail(str(exc)) from None
    if not reports:
        typer.echo("no audit records yet")
        return
    if not _print_reports(reports, trust=trust, require_pinned=require_pinned):
        raise typer.Exit(1)


@upstreams_app.command("add")
def upstreams_add(
    name: Annotated[str, typer.Argument(help="service name its operations are invoked under, e.g. huli-fulfilment")],
    owner: Annotated[
        str,
        typer.Option(
            "--owner",
            help="提供单位: the department owning the system's data; only it publishes its catalog items and decides",
        ),
    ],
    wsdl: Annotated[str | None, typer.Option("--wsdl", help="the WSDL: a file path or an http(s) URL")] = None,
    openapi: Annotated[str | None, typer.Option("--openapi", help="the OpenAPI 3 document: path or URL")] = None,
    endpoint: Annotated[str | None, typer.Option(help="where calls go, instead of the contract's address")] = None,
    safe: Annotated[
        list[str], typer.Option("--safe", help="a WSDL operation that only reads, so may be retried (repeat)")
    ] = [],  # noqa: B006
    policy: Annotated[
        str | None, typer.Option(help='resilience overrides as JSON, e.g. \'{"total_timeout": 3, "max_attempts": 2}\'')
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a district system; every running gateway node offers it within about a second."""
    from gateway.upstreams.registry import BUILT_IN, add_upstream, prepare

    if (wsdl is None) == (openapi is None):
        raise _fail("give exactly one of --wsdl or --openapi")
    try:
        overrides = json.loads(policy) if policy else {}
    except json.JSONDecodeError as exc:
        raise _fail(f"--policy is not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise _fail("--policy must be a JSON object")
    settings = _settings(data_dir)
    try:
        prepared = prepare(
            name,
            "wsdl" if wsdl else "openapi",
            source=wsdl or openapi,
            endpoint=endpoint,
            safe=safe,
            policy=overrides,
            allow_files=True,
            reserved=BUILT_IN | frozenset(settings.upstream_urls),
            fetch_allow=settings.contract_fetch_allowlist,
        )
    except Problem as problem:
        raise _fail(f"{problem.code}: {problem.detail}", 1) from None
    if not owner.strip() or len(owner) > 200:
        raise _fail("--owner names a department (1 to 200 characters)")
    out = _run_registry(settings, lambda session: add_upstream(session, prepared, "cli", owner))
    typer.echo(
        f"registered {out.name} ({out.kind}, {len(out.operations)} operations) from {out.source}, owned by {owner}"
    )
    for operation in out.operations:
        typer.echo(
            f"  {out.name}/{operation.operation:<28} {'safe ' if operation.safe else 'write'}  {operation.summary}"
        )


@upstreams_app.command("list")
def upstreams_list(data_dir: DataDir = None) -> None:
    """List registered upstreams and their operations."""
    from gateway.upstreams.registry import list_upstreams

    rows = _run_registry(_settings(data_dir), list_upstreams)
    if not rows:
        typer.echo("no registered upstreams")
    for row in rows:
        where = row.endpoint or "(the contract's address)"
        typer.echo(f"{row.name:<20} {row.kind:<8} {len(row.operations):>3} operations  endpoint {where}")
        typer.echo(f"{'':<20} source {row.source}  registered {_beijing(row.created_at)} by {row.created_by}")
        typer.echo(f"{'':<20} owned by {row.owner_department or '(nobody: set it with `upstreams owner`)'}")
        for operation in row.operations:
            typer.echo(f"{'':<20}   {row.name}/{operation.operation}{'  (safe)' if operation.safe else ''}")


@upstreams_app.command("owner")
def upstreams_owner(
    name: Annotated[str, typer.Argument(help="a service, built-in (credit, golden-tax …) or registered")],
    department: Annotated[str | None, typer.Argument(help="the department to hand it to; omit to show owners")] = None,
    data_dir: DataDir = None,
) -> None:
    """Show or change which department owns a service's data; its open and live sharing requests follow."""
    from gateway.sharing.ownership import owners, set_owner

    settings = _settings(data_dir)
    if department is None:
        owned = _run_registry(settings, owners)
        typer.echo(f"{name}: {owned.get(name) or '(no owner)'}")
        return
    if not department.strip() or len(department) > 200:
        raise _fail("the department is 1 to 200 characters")
    previous, moved = _run_registry(settings, lambda session: set_owner(session, name, department, "cli"))
    typer.echo(f"{name}: owned by {department} (was {previous or 'nobody'}); {moved} sharing request(s) now go to it")


@upstreams_app.command("remove")
def upstreams_remove(name: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Remove a registered upstream and revoke its grants; every node stops offering it within about a second."""
    from gateway.upstreams.registry import remove_upstream

    out, revoked = _run_registry(_settings(data_dir), lambda session: remove_upstream(session, name))
    typer.echo(f"removed {out.name}; {revoked} grant(s) revoked")


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

    start, end = _ms(_when(from_, "--from")), _ms(_when(to, "--to"))
    if end <= start:
        raise _fail("--to must be later than --from")
    settings = _settings(data_dir)
    exported = _run_engine(
        settings, lambda engine: export_records(engine, file, from_ms=start, to_ms=end, chains=chain or None)
    )
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
    after their archive file has been read back and verified."""
    from gateway.audit.archive import ArchiveError, archive_chains
    from gateway.audit.log import node_trust

    settings = _settings(data_dir)
    now = datetime.now(UTC)
    limit = now - timedelta(days=settings.audit_retention_days)
    cutoff = _when(before, "--before") if before else limit
    if cutoff > limit and not force:
        raise _fail(
            f"--before {_beijing(cutoff)} is inside the retention period ({settings.audit_retention_days} days,"
            f" until {_beijing(limit)}); records stay in the database that long. Use --force to archive anyway."
        )

    async def work(engine: Any) -> list[Any]:
        trusted = await node_trust(engine, settings)
        return await archive_chains(
            engine, settings.archive_dir, before_ms=_ms(cutoff), trusted=trusted, suite=settings.crypto_suite
        )

    try:
        results = _run_engine(settings, work)
    except ArchiveError as exc:
        raise _fail(str(exc), 1) from None
    if not results:
        typer.echo(f"nothing to archive before {_beijing(cutoff)}")
    for result in results:
        typer.echo(
            f"chain {result.chain_id}: archive {result.seq} holds heights {result.from_height}–{result.to_height}"
            f" ({result.records} records) in {result.path}, {result.digest[:23]}…; removed from the database"
        )


def _keyring(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from gateway.audit.keys import open_keyring
    from security.keyring import KeyRingError

    async def with_ring(engine: Any) -> T:
        return await work(await open_keyring(settings, engine))

    try:
        return _run_engine(settings, with_ring)
    except KeyRingError as exc:
        raise _fail(str(exc), 1) from None


def _stamp(ms: int | None) -> str:
    from schemas.times import beijing_ms

    return "-" if ms is None else beijing_ms(ms)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """The master key (by id), every data key and its state, and this node's checkpoint signing key."""
    from gateway.audit.log import SIGNING_FILES, load_signer
    from security.checkpoints import signer_key_id

    settings = _settings(data_dir)

    async def work(ring: Any) -> None:
        current = {ring.current(suite).key_id for suite in ("standard", "sm") if _has_current(ring, suite)}
        typer.echo(f"master key  {ring.master.key_id}  from {ring.master.source}")
        for row in ring.rows():
            if row.destroyed:
                state = f"destroyed {_stamp(row.destroyed_ms)}"
            elif row.kind == "index":
                state = "subject and body digests"
            else:
                state = "current" if row.key_id in current else "retired (opens old payloads)"
            typer.echo(f"{row.kind:<6} {row.key_id:<36} {row.suite:<9} created {_stamp(row.created_ms)}  {state}")

    _keyring(settings, work)
    load_signer(settings)  # the configured suite's key exists from here on
    for suite, (_, key_file, public_file) in SIGNING_FILES.items():
        if not (settings.keys_dir / key_file).exists():
            continue
        signer = load_signer(settings, suite)
        use = "in use" if suite == settings.crypto_suite else "signed earlier checkpoints"
        typer.echo(
            f"signing {signer_key_id(signer.public_key())}  checkpoint key of chain {settings.node_id}"
            f" ({suite} suite, {use}); public half: {settings.keys_dir / public_file}"
        )


def _has_current(ring: Any, suite: str) -> bool:
    try:
        ring.current(suite)
    except Exception:  # a suite never used has no current key
        return False
    return True


@keys_app.command("rotate")
def keys_rotate(
    suite: Annotated[
        list[str], typer.Option("--suite", help="standard or sm (default: every suite in use and MSJX_CRYPTO_SUITE)")
    ] = [],  # noqa: B006
    data_dir: DataDir = None,
) -> None:
    """Start new data keys now; every running node seals with them within about a second, no restart needed."""
    from security.crypto import SUITE_NAMES

    for name in suite:
        if name not in SUITE_NAMES:
            raise _fail(f"--suite {name!r}: expected one of {', '.join(SUITE_NAMES)}")
    settings = _settings(data_dir)
    made = _keyring(settings, lambda ring: ring.rotate(suite or None))
    for row in made:
        typer.echo(f"new data key {row.key_id} ({row.suite}); older keys still open their payloads")


@keys_app.command("destroy")
def keys_destroy(
    before: Annotated[str, typer.Option("--before", help=f"destroy data keys retired before this: {WHEN_HELP}")],
    force: Annotated[
        bool, typer.Option("--force", help="allow a date inside the retention period (MSJX_AUDIT_RETENTION_DAYS)")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Crypto-shred: destroy data keys that stopped sealing before DATE. Their payloads can never be opened
    again; the chain, which covers ciphertext digests, still verifies. The current keys are never destroyed."""
    settings = _settings(data_dir)
    cutoff = _when(before, "--before")
    now = datetime.now(UTC)
    limit = now - timedelta(days=settings.audit_retention_days)
    if cutoff > now:
        raise _fail("--before is in the future")
    if cutoff > limit and not force:
        raise _fail(
            f"--before {_beijing(cutoff)} is inside the retention period ({settings.audit_retention_days} days,"
            f" until {_beijing(limit)}): payloads must stay readable that long. Use --force to destroy anyway."
        )
    destroyed = _keyring(settings, lambda ring: ring.destroy_before(_ms(cutoff)))
    if not destroyed:
        typer.echo(f"no data key was retired before {_beijing(cutoff)}")
    for row in destroyed:
        typer.echo(f"destroyed data key {row.key_id} ({row.suite}, created {_stamp(row.created_ms)})")


@keys_app.command("public")
def keys_public(
    suite: Annotated[
        str | None, typer.Option("--suite", help="standard (Ed25519) or sm (SM2); default: MSJX_CRYPTO_SUITE")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Print this node's checkpoint public key (PEM), for `audit verify --pubkey` on another machine."""
    from gateway.audit.log import load_signer
    from security.crypto import SUITE_NAMES
    from security.keys import public_key_pem

    if suite is not None and suite not in SUITE_NAMES:
        raise _fail(f"--suite {suite!r}: expected one of {', '.join(SUITE_NAMES)}")
    typer.echo(public_key_pem(load_signer(_settings(data_dir), suite).public_key()), nl=False)


nodes_app = typer.Typer(
    help="Node keys: the checkpoint key each node registers in the database; pin or revoke them.",
    no_args_is_help=True,
)
keys_app.add_typer(nodes_app, name="nodes")


def _operator() -> str:
    import getpass
    import os

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"uid {os.getuid()}"


@nodes_app.command("list")
def nodes_list(data_dir: DataDir = None) -> None:
    """Every node key: chain, key id, algorithm, status (self-registered, pinned, revoked), who and when."""
    from gateway.audit.node_keys import list_node_keys

    keys = _run_engine(_settings(data_dir), list_node_keys)
    if not keys:
        typer.echo("no node key registered yet (a node registers its own when it first starts)")
    for key in keys:
        line = f"{key.chain_id:<16} {key.key_id:<25} {key.algorithm:<8} {key.status:<15}"
        line += f" registered {_stamp(key.registered_ms)}"
        if key.pinned_by is not None:
            line += f"  pinned by {key.pinned_by} {_stamp(key.pinned_ms)} (signed by {key.pin_signer})"
        if key.revoked_by is not None:
            line += (
                f"  revoked by {key.revoked_by} {_stamp(key.revoked_ms)}, its checkpoints accepted through height"
                f" {key.revoked_height or 0}"
            )
        typer.echo(line)


@nodes_app.command("pin")
def nodes_pin(
    key_id: Annotated[str, typer.Argument(help="the key id `keys nodes list` shows, e.g. ed25519:0123456789abcdef")],
    by: Annotated[str | None, typer.Option("--by", help="who pins it (default: the login name)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Pin a node key after checking it out of band (compare its key id with the one `keys list` prints on that
    node). The pin is signed with this node's checkpoint key, so every node that trusts this one trusts the pin."""
    from gateway.audit.log import load_signer
    from gateway.audit.node_keys import NodeKeyError, pin_node_key

    settings = _settings(data_dir)
    signer = load_signer(settings)
    who = by or _operator()
    try:
        key = _run_engine(settings, lambda engine: pin_node_key(engine, key_id, who, signer))
    except NodeKeyError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"pinned {key.key_id} (chain {key.chain_id}, {key.algorithm}) by {who}; pin signed by {key.pin_signer}")


@nodes_app.command("revoke")
def nodes_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id `keys nodes list` shows")],
    by: Annotated[str | None, typer.Option("--by", help="who revokes it (default: the login name)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke a node key (lost or stolen): its checkpoints above the last one it signed so far no longer verify;
    that last one is recorded and must stay, so nothing it signed before can be rewritten either."""
    from gateway.audit.node_keys import NodeKeyError, revoke_node_key

    who = by or _operator()
    try:
        key = _run_engine(_settings(data_dir), lambda engine: revoke_node_key(engine, key_id, who))
    except NodeKeyError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"revoked {key.key_id} (chain {key.chain_id}) by {who}; its checkpoints are accepted through height"
        f" {key.revoked_height or 0} and no further: the node needs a new key (move its keys/audit-signing.key aside"
        " and restart it)"
    )


@keys_app.command("new-caller")
def keys_new_caller(
    caller_id: Annotated[str, typer.Argument(help="the caller id the key pair is for, e.g. platform")],
    out: Annotated[
        Path | None, typer.Option(help="where the private key goes (default: ./<caller>.pem); the public key beside it")
    ] = None,
    algorithm: Annotated[
        str, typer.Option("--algorithm", help="ed25519, or sm2-sm3 (国密 SM2) for callers whose rules demand it")
    ] = "ed25519",
) -> None:
    """Make a caller's key pair (Ed25519, or SM2 with --algorithm sm2-sm3) on the caller's side: the private key to a
    file (mode 0600), never to the gateway; prints the public key and the key id that `callers add --public-key`
    registers."""
    from security.keys import KeyFormatError, generate, key_id_for, private_key_pem, public_key_pem, write_secret_file
    from security.verdicts import ALGORITHMS

    private_file = out or Path(f"{caller_id}.pem")
    public_file = private_file.with_name(private_file.name.removesuffix(".pem") + ".pub.pem")
    for path in (private_file, public_file):
        if path.exists():
            raise _fail(f"{path} exists; a key is never overwritten (remove it, or give --out)")
    if algorithm not in ALGORITHMS:
        raise _fail(f"--algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    try:
        key = generate(algorithm)
    except KeyFormatError as exc:
        raise _fail(str(exc)) from None
    public_pem = public_key_pem(key.public_key())
    try:
        write_secret_file(private_file, private_key_pem(key))
        public_file.write_text(public_pem)
    except OSError as exc:
        raise _fail(f"cannot write the key pair: {exc.strerror}: {exc.filename}") from None
    typer.echo(f"private key {private_file} (mode 0600): keep it with the caller; the gateway never needs it")
    typer.echo(f"public key  {public_file}")
    typer.echo(f"key id      {key_id_for(caller_id, key.public_key())}")
    typer.echo(public_pem, nl=False)


@app.command()
def call(
    service: Annotated[str, typer.Argument()],
    operation: Annotated[str, typer.Argument()],
    purpose: Annotated[str, typer.Option(help="purpose code the grant names")],
    key: Annotated[Path, typer.Option(help="the caller's Ed25519 or SM2 private key (PKCS#8 PEM)")],
    caller: Annotated[str, typer.Option(help="caller id")],
    param: Annotated[list[str], typer.Option("--param", help="NAME=VALUE, repeat for each input")] = [],  # noqa: B006
    json_params: Annotated[
        str | None,
        typer.Option("--json-params", help="FILE or - (stdin): the params as a JSON object, for nested values"),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Idempotency-Key header (default for submit-voucher: voucher-<voucher_no>); a call repeated with"
            " the same key is answered from the gateway's store, never done twice",
        ),
    ] = None,
    key_id: Annotated[str | None, typer.Option(help="key id (default: <caller>.<fingerprint of the key>)")] = None,
    url: Annotated[
        str | None, typer.Option(help="gateway URL", envvar="MSJX_GATEWAY_URL", show_default="http://127.0.0.1:8000")
    ] = None,
) -> None:
    """Make one signed call and print the JSON answer (a problem+json on failure, exit 1)."""
    import httpx

    from gateway.client import GatewayClient, GatewayError, gateway_url
    from security.keys import KeyFormatError, key_id_for, load_private_key_file

    params = _call_params(param, json_params)
    idempotency_key = idempotency_key or _default_idempotency_key(operation, params)
    if idempotency_key is not None:
        typer.echo(f"Idempotency-Key: {idempotency_key}", err=True)
    try:
        private_key = load_private_key_file(key)
    except KeyFormatError as exc:
        raise _fail(f"--key: {exc}") from None
    resolved_key_id = key_id or key_id_for(caller, private_key.public_key())
    target = gateway_url(url)
    try:
        with GatewayClient(target, resolved_key_id, private_key) as client:
            answer, replayed = client.call(service, operation, purpose, params, idempotency_key=idempotency_key)
    except GatewayError as exc:
        typer.echo(json.dumps(exc.problem, ensure_ascii=False, indent=2))
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {target}: {exc}") from None
    if replayed:
        typer.echo(
            "Idempotent-Replayed: the stored answer of an earlier call with this key; nothing was done again", err=True
        )
    typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))


def _call_params(param: list[str], json_params: str | None) -> dict[str, Any]:
    """`call`'s params: the --json-params object, then each --param NAME=VALUE (a name given twice is refused)."""
    params: dict[str, Any] = {}
    if json_params is not None:
        try:
            text = sys.stdin.read() if json_params == "-" else Path(json_params).read_text(encoding="utf-8")
        except OSError as exc:
            raise _fail(f"--json-params: cannot read {json_params}: {exc.strerror}") from None
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(f"--json-params: not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise _fail("--json-params: expected a JSON object of params")
        params.update(loaded)
    for item in param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _fail(f"--param {item!r}: expected NAME=VALUE")
        if name in params:
            raise _fail(f"--param {name}: given twice (or in --json-params too)")
        params[name] = value
    return params


def _default_idempotency_key(operation: str, params: dict[str, Any]) -> str | None:
    """A payment's key follows its voucher number, so repeating the same voucher can never pay it twice."""
    if operation != "submit-voucher":
        return None
    voucher_no = params.get("voucher_no")
    return f"voucher-{voucher_no}" if isinstance(voucher_no, str) and voucher_no else None


# --- the security officer's audit API from the command line (signed as an officer) ------------------------------

OfficerKey = Annotated[Path, typer.Option("--key", help="the officer's Ed25519 private key (PKCS#8 PEM)")]
OfficerCaller = Annotated[str, typer.Option("--caller", help="the officer's caller id")]
GatewayUrl = Annotated[
    str | None, typer.Option(help="gateway URL", envvar="MSJX_GATEWAY_URL", show_default="http://127.0.0.1:8000")
]
ReasonCategoryOption = Annotated[
    str | None, typer.Option("--category", help="complaint, inspection, incident, court_order or other")
]


def _officer_request(key: Path, caller: str, url: str | None, method: str, path: str, **options: Any) -> Any:
    """One signed request to the officer API; a problem prints as JSON and exits 1."""
    import httpx

    from gateway.client import GatewayClient, GatewayError
    from security.keys import KeyFormatError

    try:
        with GatewayClient.from_key_file(url, caller, key) as client:
            try:
                return client.request(method, path, **options)
            except httpx.HTTPError as exc:
                raise _fail(f"cannot reach {client.base_url}: {exc}") from None
    except GatewayError as exc:
        typer.echo(json.dumps(exc.problem, ensure_ascii=False, indent=2))
        raise typer.Exit(1) from None
    except KeyFormatError as exc:
        raise _fail(f"--key: {exc}") from None


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
        "from": _when(from_, "--from").isoformat() if from_ else None,
        "to": _when(to, "--to").isoformat() if to else None,
        "event": event,
        "category": category,
        "caller": of_caller,
        "decision": decision,
        "target": target,
        "limit": str(limit),
    }
    query = "&".join(f"{name}={quote(value)}" for name, value in params.items() if value is not None)
    answer = _officer_request(key, caller, url, "GET", f"/v1/audit/records?{query}")
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
    answer = _officer_request(
        key, caller, url, "POST", f"/v1/audit/records/{quote(record_id, safe='')}/payload", json=body
    )
    typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))


def main() -> None:
    from gateway.storage.reachability import ServiceUnreachable

    try:
        app()
    except ServiceUnreachable as exc:  # PostgreSQL or Redis down at start: the line says which and where
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
