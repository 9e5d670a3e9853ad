"""The `msjx-gateway` command: serve (and the demo), database, callers, grants, audit, a signed call, simulators."""

from __future__ import annotations

import asyncio
import json
import logging
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
app.add_typer(db_app, name="db")
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
    simulators = None
    try:
        if demo:
            from gateway import demo as demo_module
            from gateway.runtime import build_adapters
            from simulators.enterprises import DEMO_USCC

            simulators, urls = demo_module.start_simulators()
            settings = settings.model_copy(update={"upstream_urls": {**urls, **settings.upstream_urls}})
            db.upgrade(settings)
            listing = asyncio.run(demo_module.seed(settings, build_adapters(settings)))
            typer.echo(f"msjx-gateway demo on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
            typer.echo(f"simulators: {', '.join(f'{name} {url}' for name, url in urls.items())}")
            typer.echo(f"demo callers and keys: {settings.data_dir / 'demo' / 'callers.json'}")
            typer.echo("try, in another shell:")
            typer.echo("  " + demo_module.call_line(port, listing, DEMO_USCC, host))
        else:
            db.upgrade(settings)
        uvicorn.run(
            create_app(settings),
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
) -> None:
    """Run the simulated upstream systems; prints their URLs as one JSON line."""
    from simulators.runner import serve as serve_simulators

    asyncio.run(serve_simulators(host, {"credit": credit_port}))


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
    adapters = build_adapters(settings)
    out = _run_registry(settings, lambda session: registry.add_grant(session, body, adapters))
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
