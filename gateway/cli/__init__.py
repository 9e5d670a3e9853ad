"""The `msjx-gateway` command: serve (and the demo), database, callers, grants, audit, keys, calendar, a call.

One module per command group; this one puts them together under one Typer application."""

from __future__ import annotations

import typer

from gateway.cli.audit import audit_app
from gateway.cli.batch import batch_app, batch_worker
from gateway.cli.calendar import calendar_app
from gateway.cli.call import call
from gateway.cli.callers import callers_app
from gateway.cli.console_users import console_users_app
from gateway.cli.db import db_app
from gateway.cli.grants import grants_app
from gateway.cli.keys import keys_app
from gateway.cli.serve import SERVER_OPTIONS, demo, serve, simulators
from gateway.cli.upstreams import upstreams_app

__all__ = ["SERVER_OPTIONS", "app", "main"]

app = typer.Typer(help="msjx-gateway: the data-sharing gateway for 免申即享 platforms.", no_args_is_help=True)
for command in (serve, simulators, demo, call):
    app.command()(command)
app.add_typer(db_app, name="db")
app.add_typer(upstreams_app, name="upstreams")
app.add_typer(callers_app, name="callers")
app.add_typer(grants_app, name="grants")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(calendar_app, name="calendar")
app.add_typer(console_users_app, name="console-users")
app.add_typer(batch_app, name="batch")
app.command("batch-worker")(batch_worker)


def main() -> None:
    from gateway.storage.reachability import StartupFailure

    try:
        app()
    except StartupFailure as exc:  # PostgreSQL or Redis down, or a path unusable: the line says which and where
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
