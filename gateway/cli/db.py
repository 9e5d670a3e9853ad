"""`msjx-gateway db`: bring the database schema up to date."""

from __future__ import annotations

import typer

from gateway.cli.common import DataDir, cli_settings

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Migrate the database to the newest schema."""
    from gateway.storage import db

    settings = cli_settings(data_dir)
    db.upgrade(settings)
    typer.echo("database is at the newest schema")
