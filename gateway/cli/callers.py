"""`msjx-gateway callers`: register callers and their public keys, list them, revoke a key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import DataDir, cli_settings, fail, run_registry

callers_app = typer.Typer(help="Callers and their public keys.", no_args_is_help=True)


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

    from gateway.access import callers
    from schemas.api import CallerIn, KeyIn
    from security.keys import KeyFormatError, key_id_for, load_public_key

    keys = []
    if public_key is not None:
        try:
            text = public_key.read_text()
            key = load_public_key(text)
        except (OSError, KeyFormatError) as exc:
            raise fail(f"--public-key: {exc}") from None
        keys.append(KeyIn(key_id=key_id or key_id_for(caller_id, key), public_key=text))
    try:
        body = CallerIn(caller_id=caller_id, name=name, department=department, roles=role, keys=keys)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    out = run_registry(cli_settings(data_dir), lambda session: callers.add_caller(session, body))
    typer.echo(out.model_dump_json(indent=2))


@callers_app.command("list")
def callers_list(data_dir: DataDir = None) -> None:
    """List callers and their keys."""
    from gateway.access import callers

    listed = run_registry(cli_settings(data_dir), callers.list_callers)
    for caller in listed:
        keys = ", ".join(f"{key.key_id} ({key.status})" for key in caller.keys) or "no keys"
        typer.echo(f"{caller.caller_id:<16} {','.join(caller.roles):<24} {caller.department}  keys: {keys}")


@callers_app.command("revoke-key")
def callers_revoke_key(
    caller_id: Annotated[str, typer.Argument()],
    key_id: Annotated[str, typer.Argument()],
    data_dir: DataDir = None,
) -> None:
    """Revoke a caller's key; every node refuses it within a second."""
    from gateway.access import callers

    out = run_registry(cli_settings(data_dir), lambda session: callers.revoke_key(session, caller_id, key_id))
    typer.echo(f"key {out.key_id} is {out.status}")
