"""`msjx-gateway console-users`: web console accounts: add (password and TOTP secret shown once), list, lock,
unlock, reset-totp, set-password."""

from __future__ import annotations

import getpass
import os
from typing import Annotated, Any

import typer

from gateway.cli.common import DataDir, beijing, cli_settings, fail, run_registry
from gateway.clock import SYSTEM_CLOCK

console_users_app = typer.Typer(
    help="Web console accounts (roles: department, auditor, operator, security_admin).", no_args_is_help=True
)
ROLE_HELP = (
    "department (部门数据专员), auditor (审计管理员), operator (系统管理员) or security_admin (安全管理员);"
    " one role per account (三员分立)"
)


def _run(data_dir: object, work: object) -> object:
    from gateway.console.accounts import AccountError

    try:
        return run_registry(cli_settings(data_dir), work)  # type: ignore[arg-type]
    except AccountError as exc:
        raise fail(str(exc), 1) from None


def _audited(data_dir: object, action: str, username: str, work: Any, detail: dict[str, Any] | None = None) -> Any:
    """Run `work(session)` with its audit record on this node's CLI chain (gateway/cli/audited.py): a change to an
    account made on the command line is on the record like one made on the security admin's page. A refusal is
    recorded too. Never a password or a TOTP secret in the record."""
    from gateway.cli.audited import CliAction, in_session, run_audited
    from gateway.console.accounts import AccountError

    action_record = CliAction(
        event=f"console.account.{action}",
        operator=getpass.getuser(),
        command=f"msjx-gateway console-users {action}",
        target_id=username[:64],
        refused_code="account_refused",
    )
    settings = cli_settings(data_dir)  # type: ignore[arg-type]
    return run_audited(settings, action_record, in_session(work), lambda _: detail or {}, refusals=(AccountError,))


@console_users_app.command("add")
def add(
    username: Annotated[str, typer.Argument(help="login name: 3–64 of a-z 0-9 . _ -")],
    role: Annotated[str, typer.Option(help=ROLE_HELP)],
    caller: Annotated[
        str | None, typer.Option(help="the caller identity the account acts as (all roles but security_admin)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="display name (default: the username)")] = None,
    password_env: Annotated[
        str | None,
        typer.Option(help="read the password from this environment variable; default: generate one and print it"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Add an account; prints its TOTP secret and otpauth URI (and a generated password) once."""
    from gateway.console import accounts

    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise fail(f"--password-env: {password_env} is not set")

    box = accounts.SecretBox.for_settings(cli_settings(data_dir))

    async def work(session: object) -> accounts.NewAccount:
        return await accounts.add_account(
            session,  # type: ignore[arg-type]
            username=username.strip().lower(),
            role=role,
            display_name=name or username,
            caller_id=caller,
            password=password,
            created_by=f"cli:{getpass.getuser()}",
            now=SYSTEM_CLOCK.now(),
            box=box,
        )

    created = _audited(data_dir, "add", username.strip().lower(), work, {"role": role, "caller": caller})
    assert isinstance(created, accounts.NewAccount)
    typer.echo(f"account {created.username} ({created.role}) added")
    if password is None:
        typer.echo(f"password: {created.password}")
    typer.echo(f"totp secret: {created.totp_secret}")
    typer.echo(f"otpauth uri: {accounts.provisioning_uri(created.username, created.totp_secret)}")


@console_users_app.command("list")
def list_(data_dir: DataDir = None) -> None:
    """List accounts: role, bound caller, state, last sign-in."""
    from gateway.console import accounts

    now = SYSTEM_CLOCK.now()
    found = _run(data_dir, accounts.list_accounts)
    for account in found:  # type: ignore[attr-defined]
        state = "disabled" if account.disabled else ("locked" if accounts.is_locked(account, now) else "active")
        typer.echo(
            f"{account.username:<20} {account.role:<15} {account.caller_id or '-':<16} {state:<8}"
            f" last login {beijing(account.last_login_at)}"
        )


@console_users_app.command("lock")
def lock(
    username: str,
    minutes: Annotated[int | None, typer.Option(help="lock for this long; default: until unlocked")] = None,
    data_dir: DataDir = None,
) -> None:
    """Lock an account (its sessions end at once)."""
    from gateway.console import accounts

    _audited(
        data_dir,
        "lock",
        username,
        lambda session: accounts.lock_account(session, username, SYSTEM_CLOCK.now(), minutes),
    )
    typer.echo(f"account {username} locked" + (f" for {minutes} minutes" if minutes else ""))


@console_users_app.command("unlock")
def unlock(username: str, data_dir: DataDir = None) -> None:
    """Unlock an account and clear its failed sign-ins."""
    from gateway.console import accounts

    _audited(data_dir, "unlock", username, lambda session: accounts.unlock_account(session, username))
    typer.echo(f"account {username} unlocked")


@console_users_app.command("reset-totp")
def reset_totp(username: str, data_dir: DataDir = None) -> None:
    """Give an account a new TOTP secret (the old authenticator stops working; its sessions end)."""
    from gateway.console import accounts

    box = accounts.SecretBox.for_settings(cli_settings(data_dir))
    secret = _audited(
        data_dir,
        "reset-totp",
        username,
        lambda session: accounts.reset_totp(session, username, SYSTEM_CLOCK.now(), box),
    )
    typer.echo(f"totp secret: {secret}")
    typer.echo(f"otpauth uri: {accounts.provisioning_uri(username, str(secret))}")


@console_users_app.command("set-password")
def set_password(
    username: str,
    password_env: Annotated[str, typer.Option(help="read the new password from this environment variable")],
    data_dir: DataDir = None,
) -> None:
    """Set an account's password (the policy applies; its sessions end)."""
    from gateway.console import accounts

    password = os.environ.get(password_env)
    if not password:
        raise fail(f"--password-env: {password_env} is not set")
    _audited(
        data_dir,
        "set-password",
        username,
        lambda session: accounts.set_password(session, username, password, SYSTEM_CLOCK.now()),
    )
    typer.echo(f"password of {username} set")
