"""The `msjx-gateway` command: serve (and the demo), database, callers, grants, audit, a signed call, simulators."""

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

import typer

from gateway.problems import Problem
from gateway.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="msjx-gateway: the data-sharing gateway for 免申即享 platforms.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
callers_app = typer.Typer(help="Callers and their public keys.", no_args_is_help=True)
grants_app = typer.Typer(
    help="Grants (the full request workflow is in the sharing-requests API).", no_args_is_help=True
)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
upstreams_app = typer.Typer(
    help="District systems registered at runtime from a WSDL or OpenAPI document.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(upstreams_app, name="upstreams")
app.add_typer(callers_app, name="callers")
app.add_typer(grants_app, name="grants")
app.add_typer(audit_app, name="audit")

T = TypeVar("T")
# How `serve` runs uvicorn; `make bench` measures these (docs/performance.md), and its Python floor uses them too.
SERVER_OPTIONS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "access_log": False}
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


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _run_registry(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run one registry action in a session after migrating; a refusal prints its detail and exits 1."""
    from gateway import db

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
    data_dir: DataDir = None,
) -> None:
    """Serve the gateway (migrating the database first)."""
    import uvicorn

    from gateway import db
    from gateway.app import create_app

    settings = _settings(data_dir)
    _logging(settings.log_level)
    # Until uvicorn takes over the signals, make SIGTERM unwind like Ctrl-C so the simulators child is stopped.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    simulators = None
    on_ready = None
    try:
        if demo:
            from gateway import demo as demo_module
            from gateway.runtime import build_adapters
            from simulators.enterprises import DEMO_USCC

            simulators, urls = demo_module.start_simulators(data_dir=settings.data_dir / "simulators")
            settings = settings.model_copy(update={"upstream_urls": {**urls, **settings.upstream_urls}})
            db.upgrade(settings)
            listing = asyncio.run(demo_module.seed(settings, build_adapters(settings)))
            lines = [
                f"msjx-gateway demo on http://{host}:{port}  (API docs: http://{host}:{port}/docs)",
                f"simulators: {', '.join(f'{name} {url}' for name, url in urls.items())}",
                f"demo callers and keys: {settings.data_dir / 'demo' / 'callers.json'}",
                "try, in another shell:",
                "  " + demo_module.call_line(port, listing, DEMO_USCC, host),
            ]

            def on_ready() -> None:
                typer.echo("\n".join(lines))

        else:
            db.upgrade(settings)
        uvicorn.run(
            create_app(settings, on_ready=on_ready),
            host=host,
            port=port,
            log_level=settings.log_level,
            **SERVER_OPTIONS,
        )
    finally:
        if simulators is not None:
            simulators.terminate()
            simulators.wait(timeout=10)


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
        typer.Option(help="a running `serve --demo` (default: http://127.0.0.1:8000 if it answers, else start one)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the 免申即享 demo: a 名单类 and a 条件类 policy through the gateway, then verify the audit chain."""
    from gateway.platform_demo import DemoError, run_demo

    settings = _settings(data_dir)
    try:
        status = run_demo(settings, url, typer.echo)
    except DemoError as exc:
        raise _fail(str(exc), 1) from None
    raise typer.Exit(status)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Migrate the database to the newest schema."""
    from gateway import db

    settings = _settings(data_dir)
    db.upgrade(settings)
    typer.echo("database is at the newest schema")


@callers_app.command("add")
def callers_add(
    caller_id: Annotated[str, typer.Argument(help="caller id, e.g. platform")],
    name: Annotated[str, typer.Option(help="display name")],
    department: Annotated[str, typer.Option(help="department the caller belongs to")],
    role: Annotated[list[str], typer.Option("--role", help="platform, department, officer, coordinator or admin")],
    public_key: Annotated[Path | None, typer.Option("--public-key", help="Ed25519 public key file (PEM)")] = None,
    key_id: Annotated[str | None, typer.Option(help="key id (default: <caller>.<fingerprint>)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a caller, optionally with its first public key."""
    from pydantic import ValidationError

    from gateway import registry
    from gateway.demo import key_id_for
    from schemas.api import CallerIn, KeyIn
    from security.keys import KeyFormatError, load_public_key

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
    from gateway import registry

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
    from gateway import registry

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
    from gateway import registry
    from gateway.runtime import build_adapters
    from schemas.api import GrantIn

    settings = _settings(data_dir)
    body = GrantIn(
        caller_id=caller_id,
        service=service,
        operation=operation,
        purpose=purpose,
        fields=field,
        valid_to=datetime.now(UTC) + timedelta(days=days),
    )

    async def work(session: Any) -> Any:
        from gateway.upstreams import registered_adapters

        adapters = {**build_adapters(settings), **await registered_adapters(session)}
        return await registry.add_grant(session, body, adapters)

    out = _run_registry(settings, work)
    typer.echo(out.model_dump_json(indent=2))


@grants_app.command("list")
def grants_list(data_dir: DataDir = None) -> None:
    """List grants."""
    from gateway import registry

    for grant in _run_registry(_settings(data_dir), registry.list_grants):
        state = "revoked" if grant.revoked_at else f"until {grant.valid_to:%Y-%m-%d}"
        typer.echo(
            f"{grant.grant_id}  {grant.caller_id:<12} {grant.service}/{grant.operation:<20} "
            f"{grant.purpose:<14} {state:<17} fields: {','.join(grant.fields)}"
        )


@grants_app.command("revoke")
def grants_revoke(grant_id: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Revoke a grant; every node refuses calls under it within a second."""
    from gateway import registry

    out = _run_registry(_settings(data_dir), lambda session: registry.revoke_grant(session, grant_id))
    typer.echo(f"grant {out.grant_id} revoked at {out.revoked_at}")


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None) -> None:
    """Verify every audit chain in the database; exit 1 naming the first bad record."""
    from gateway import db
    from gateway.audit import verify_all

    settings = _settings(data_dir)

    async def main() -> list[Any]:
        engine = db.create_engine(settings)
        try:
            return await verify_all(engine)
        finally:
            await engine.dispose()

    reports = asyncio.run(main())
    if not reports:
        typer.echo("no audit records yet")
        return
    bad = False
    for report in reports:
        if report.ok:
            typer.echo(f"chain {report.chain_id}: {report.records} records intact, head {report.head_hash[:16]}…")
        else:
            bad = True
            typer.echo(f"FAILED {report.fault}", err=True)
    if bad:
        raise typer.Exit(1)


@upstreams_app.command("add")
def upstreams_add(
    name: Annotated[str, typer.Argument(help="service name its operations are invoked under, e.g. huli-fulfilment")],
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
    from gateway.upstreams import BUILT_IN, add_upstream, prepare

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
        )
    except Problem as problem:
        raise _fail(f"{problem.code}: {problem.detail}", 1) from None
    out = _run_registry(settings, lambda session: add_upstream(session, prepared, "cli"))
    typer.echo(f"registered {out.name} ({out.kind}, {len(out.operations)} operations) from {out.source}")
    for operation in out.operations:
        typer.echo(
            f"  {out.name}/{operation.operation:<28} {'safe ' if operation.safe else 'write'}  {operation.summary}"
        )


@upstreams_app.command("list")
def upstreams_list(data_dir: DataDir = None) -> None:
    """List registered upstreams and their operations."""
    from gateway.upstreams import list_upstreams

    rows = _run_registry(_settings(data_dir), list_upstreams)
    if not rows:
        typer.echo("no registered upstreams")
    for row in rows:
        where = row.endpoint or "(the contract's address)"
        typer.echo(f"{row.name:<20} {row.kind:<8} {len(row.operations):>3} operations  endpoint {where}")
        typer.echo(f"{'':<20} source {row.source}  registered {row.created_at:%Y-%m-%d %H:%M} by {row.created_by}")
        for operation in row.operations:
            typer.echo(f"{'':<20}   {row.name}/{operation.operation}{'  (safe)' if operation.safe else ''}")


@upstreams_app.command("remove")
def upstreams_remove(name: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Remove a registered upstream and revoke its grants; every node stops offering it within about a second."""
    from gateway.upstreams import remove_upstream

    out, revoked = _run_registry(_settings(data_dir), lambda session: remove_upstream(session, name))
    typer.echo(f"removed {out.name}; {revoked} grant(s) revoked")


@app.command()
def call(
    service: Annotated[str, typer.Argument()],
    operation: Annotated[str, typer.Argument()],
    purpose: Annotated[str, typer.Option(help="purpose code the grant names")],
    key: Annotated[Path, typer.Option(help="the caller's Ed25519 private key (PKCS#8 PEM)")],
    caller: Annotated[str, typer.Option(help="caller id")],
    param: Annotated[list[str], typer.Option("--param", help="NAME=VALUE, repeat for each input")] = [],  # noqa: B006
    key_id: Annotated[str | None, typer.Option(help="key id (default: <caller>.<fingerprint of the key>)")] = None,
    url: Annotated[str, typer.Option(help="gateway URL")] = "http://127.0.0.1:8000",
) -> None:
    """Make one signed call and print the JSON answer (a problem+json on failure, exit 1)."""
    import httpx

    from gateway.client import GatewayClient, GatewayError
    from gateway.demo import key_id_for
    from security.keys import KeyFormatError, load_private_key_file

    params: dict[str, str] = {}
    for item in param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _fail(f"--param {item!r}: expected NAME=VALUE")
        params[name] = value
    try:
        private_key = load_private_key_file(key)
    except KeyFormatError as exc:
        raise _fail(f"--key: {exc}") from None
    resolved_key_id = key_id or key_id_for(caller, private_key.public_key())
    try:
        with GatewayClient(url, resolved_key_id, private_key) as client:
            answer = client.invoke(service, operation, purpose, **params)
    except GatewayError as exc:
        typer.echo(json.dumps(exc.problem, ensure_ascii=False, indent=2))
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {url}: {exc}") from None
    typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
