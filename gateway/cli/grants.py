"""`msjx-gateway grants`: issue, list, revoke, suspend and resume grants."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import DataDir, beijing, cli_settings, fail, operator_name, request_body, run_registry
from gateway.clock import SYSTEM_CLOCK
from gateway.settings import Settings

grants_app = typer.Typer(
    help="Grants (the full request workflow is in the sharing-requests API).", no_args_is_help=True
)


@grants_app.command("add")
def grants_add(
    caller_id: Annotated[str, typer.Argument()],
    service: Annotated[str, typer.Argument()],
    operation: Annotated[str, typer.Argument()],
    purpose: Annotated[str, typer.Option(help="purpose code")],
    field: Annotated[list[str], typer.Option("--field", help="a field the grant returns (repeat)")],
    days: Annotated[int, typer.Option(help="validity in days from now", min=1, max=36500)] = 365,
    share_method: Annotated[
        list[str], typer.Option("--share-method", help="共享方式: api (single calls) and/or batch (batch jobs); repeat")
    ] = ["api"],  # noqa: B006
    data_dir: DataDir = None,
) -> None:
    """Issue a grant directly (operators; departments use the sharing-request workflow)."""
    from gateway.access import grants as grant_rows
    from gateway.runtime import build_adapters
    from schemas.api import GrantIn

    settings = cli_settings(data_dir)
    _require_upstream_url(settings, service)
    unknown = sorted(set(share_method) - {"api", "batch"})
    if unknown:
        raise fail(f"--share-method: {unknown} unknown; use api and/or batch")
    body = request_body(
        GrantIn,
        caller_id=caller_id,
        service=service,
        operation=operation,
        purpose=purpose,
        fields=field,
        valid_to=SYSTEM_CLOCK.now() + timedelta(days=days),
        share_methods=share_method,
    )

    async def work(session: Any) -> Any:
        from gateway.upstreams.registry import registered_adapters

        adapters = {**build_adapters(settings), **await registered_adapters(session)}
        return await grant_rows.add_grant(session, body, adapters)

    from gateway.cli.audited import CliAction, in_session, run_audited
    from gateway.http.problems import Problem

    action = CliAction(
        "grant.add",
        operator_name(),
        f"msjx-gateway grants add {caller_id} {service} {operation}",
        body.model_dump(mode="json"),
        service=service,
        roles=("admin",),
    )
    out = run_audited(settings, action, in_session(work), lambda out: out.model_dump(mode="json"), refusals=(Problem,))
    typer.echo(out.model_dump_json(indent=2))


def _require_upstream_url(settings: Settings, service: str) -> None:
    """A built-in service is offered only where MSJX_UPSTREAM_URLS gives its URL: say so, not just "known: []"."""
    from gateway.upstreams.registry import BUILT_IN

    if service in BUILT_IN and service not in settings.upstream_urls:
        raise fail(
            f"unknown_service: this node has no URL for {service!r}: set MSJX_UPSTREAM_URLS (the same on every node),"
            f""" e.g. '{{"{service}": "http://{service}.example:9101"}}', then add the grant""",
            1,
        )


@grants_app.command("list")
def grants_list(data_dir: DataDir = None) -> None:
    """List grants."""
    from gateway.access import grants as grant_rows

    for grant in run_registry(cli_settings(data_dir), grant_rows.list_grants):
        state = f"until {beijing(grant.valid_to)[:16]}" if grant.status == "active" else grant.status
        delivery = "" if grant.delivery_state == "not_applicable" else f"  delivery: {grant.delivery_state}"
        typer.echo(
            f"{grant.grant_id}  {grant.caller_id:<12} {grant.service}/{grant.operation:<20} "
            f"{grant.purpose:<14} {state:<23} fields: {','.join(grant.fields)}{delivery}"
        )


@grants_app.command("revoke")
def grants_revoke(grant_id: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Revoke a grant; every node refuses calls under it within a second."""
    from gateway.access import grants as grant_rows
    from gateway.sharing import workflow
    from gateway.sharing.request_states import Actor

    operator = Actor("operator", None, frozenset({"admin"}))

    async def work(session: Any) -> Any:
        # Through the workflow: the last live grant of a sharing request takes the request with it.
        now = SYSTEM_CLOCK.now()
        grant, _ = await workflow.revoke_grant(session, operator, grant_id, None, now)
        return grant_rows.grant_out(grant, now)

    out = _audited_grant_change(data_dir, grant_id, "revoke", {}, work)
    typer.echo(f"grant {out.grant_id} revoked at {beijing(out.revoked_at)}")


def _grant_change(data_dir: Path | None, grant_id: str, change: str, body: Any) -> Any:
    """Suspend or resume as the operator (an admin), through the same workflow and history as the API."""
    from gateway.access import grants as grant_rows
    from gateway.sharing import obligations
    from gateway.sharing.request_states import Actor

    operator = Actor("operator", None, frozenset({"admin"}))
    act = obligations.suspend if change == "suspend" else obligations.resume

    async def work(session: Any) -> Any:
        now = SYSTEM_CLOCK.now()
        grant, _ = await act(session, operator, grant_id, body, now)
        return grant_rows.grant_out(grant, now)

    return _audited_grant_change(data_dir, grant_id, change, body.model_dump(mode="json"), work)


def _audited_grant_change(data_dir: Path | None, grant_id: str, change: str, request: dict[str, Any], work: Any) -> Any:
    """A grant change made here is on the record like the API's (gateway/cli/audited.py); a refusal too."""
    from gateway.cli.audited import CliAction, in_session, run_audited
    from gateway.http.problems import Problem

    action = CliAction(
        f"grant.{change}",
        operator_name(),
        f"msjx-gateway grants {change} {grant_id}",
        request,
        grant_id=grant_id[:64],
        roles=("admin",),
    )
    return run_audited(
        cli_settings(data_dir), action, in_session(work), lambda out: out.model_dump(mode="json"), refusals=(Problem,)
    )


@grants_app.command("suspend")
def grants_suspend(
    grant_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option(help="why: the misuse found (recorded, shown in refusals)")],
    data_dir: DataDir = None,
) -> None:
    """Suspend a grant for misuse: calls under it are refused with grant_suspended until it is resumed."""
    from schemas.sharing import SuspendIn

    out = _grant_change(data_dir, grant_id, "suspend", request_body(SuspendIn, reason=reason))
    typer.echo(f"grant {out.grant_id} suspended at {out.suspended_at}: {out.suspend_reason}")


@grants_app.command("resume")
def grants_resume(
    grant_id: Annotated[str, typer.Argument()],
    reason: Annotated[str | None, typer.Option(help="why it may be used again")] = None,
    data_dir: DataDir = None,
) -> None:
    """End a grant's suspension; calls under it are served again."""
    from schemas.sharing import ResumeIn

    out = _grant_change(data_dir, grant_id, "resume", request_body(ResumeIn, reason=reason))
    typer.echo(f"grant {out.grant_id} resumed ({out.status})")
