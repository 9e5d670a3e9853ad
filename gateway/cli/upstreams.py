"""`msjx-gateway upstreams`: register district systems from a WSDL or OpenAPI document, list, set owner, remove."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import DataDir, beijing, cli_settings, fail, operator_name, run_registry
from gateway.clock import SYSTEM_CLOCK
from gateway.http.problems import Problem

upstreams_app = typer.Typer(
    help="District systems registered at runtime from a WSDL or OpenAPI document.", no_args_is_help=True
)


def _soap_auth(
    headers: list[str],
    username: str | None,
    password: str | None,
    x509_key: str | None = None,
    x509_cert: str | None = None,
) -> dict[str, object] | None:
    auth: dict[str, object] = {}
    values: dict[str, dict[str, str]] = {}
    for entry in headers:
        target, equals, value = entry.partition("=")
        part, dot, name = target.partition(".")
        if not equals or not dot or not part or not name:
            raise fail(f"--soap-header {entry!r}: write PART.FIELD=VALUE")
        values.setdefault(part, {})[name] = value
    if values:
        auth["headers"] = values
    if (username is None) != (password is None):
        raise fail("--wsse-username and --wsse-password go together")
    if username is not None and password is not None:
        if not password.startswith("secret:"):
            raise fail("--wsse-password names a secret: secret:NAME, read from MSJX_SECRET_NAME")
        auth["wsse"] = {"username": username, "password": password}
    if (x509_key is None) != (x509_cert is None):
        raise fail("--wsse-x509-key and --wsse-x509-cert go together")
    if x509_key is not None and x509_cert is not None:
        if "wsse" in auth:
            raise fail("give a UsernameToken or an X.509 signature, not both")
        if not x509_key.startswith("secret:"):
            raise fail("--wsse-x509-key names a secret: secret:NAME, read from MSJX_SECRET_NAME")
        cert = x509_cert
        if not cert.startswith("secret:"):
            try:
                cert = Path(cert).read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise fail(f"--wsse-x509-cert: cannot read {x509_cert}: {exc}") from None
        auth["wsse"] = {"x509_key": x509_key, "x509_cert": cert}
    return auth or None


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
    soap_header: Annotated[
        list[str],
        typer.Option(
            "--soap-header",
            help="a SOAP header value the WSDL requires, PART.FIELD=VALUE; VALUE secret:NAME reads MSJX_SECRET_NAME"
            " on each node (repeat)",
        ),
    ] = [],  # noqa: B006
    wsse_username: Annotated[str | None, typer.Option(help="WS-Security UsernameToken toward the upstream")] = None,
    wsse_password: Annotated[str | None, typer.Option(help="its password: secret:NAME (MSJX_SECRET_NAME)")] = None,
    wsse_x509_key: Annotated[
        str | None, typer.Option(help="WS-Security X.509 signature: the key's PEM as secret:NAME")
    ] = None,
    wsse_x509_cert: Annotated[str | None, typer.Option(help="its certificate: a PEM file, or secret:NAME")] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a district system; every running gateway node offers it within about a second."""
    from gateway.upstreams.registry import BUILT_IN, add_upstream, prepare

    if (wsdl is None) == (openapi is None):
        raise fail("give exactly one of --wsdl or --openapi")
    try:
        overrides = json.loads(policy) if policy else {}
    except json.JSONDecodeError as exc:
        raise fail(f"--policy is not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise fail("--policy must be a JSON object")
    settings = cli_settings(data_dir)
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
            soap_auth=_soap_auth(soap_header, wsse_username, wsse_password, wsse_x509_key, wsse_x509_cert),
        )
    except Problem as problem:
        raise fail(f"{problem.code}: {problem.detail}", 1) from None
    if not owner.strip() or len(owner) > 200:
        raise fail("--owner names a department (1 to 200 characters)")
    out = _audited(
        settings,
        "upstream.add",
        name,
        {"owner": owner},
        lambda session: add_upstream(session, prepared, "cli", owner, SYSTEM_CLOCK.now()),
        lambda out: {
            "name": out.name,
            "kind": out.kind,
            "operations": [operation.operation for operation in out.operations],
            "source": out.source,
        },
    )
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

    rows = run_registry(cli_settings(data_dir), list_upstreams)
    if not rows:
        typer.echo("no registered upstreams")
    for row in rows:
        where = row.endpoint or "(the contract's address)"
        typer.echo(f"{row.name:<20} {row.kind:<8} {len(row.operations):>3} operations  endpoint {where}")
        typer.echo(f"{'':<20} source {row.source}  registered {beijing(row.created_at)} by {row.created_by}")
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

    settings = cli_settings(data_dir)
    if department is None:

        async def show(session: Any) -> dict[str, str]:
            await _known_service(session, name)
            return await owners(session)

        owned = run_registry(settings, show)
        typer.echo(f"{name}: {owned.get(name) or '(no owner)'}")
        return
    if not department.strip() or len(department) > 200:
        raise fail("the department is 1 to 200 characters")

    async def hand_over(session: Any) -> tuple[str | None, int]:
        await _known_service(session, name)  # a mistyped name would otherwise own nothing, silently
        return await set_owner(session, name, department, "cli")

    previous, moved = _audited(
        settings,
        "upstream.owner",
        name,
        {"department": department},
        hand_over,
        lambda result: {"previous": result[0], "requests_moved": result[1]},
    )
    typer.echo(f"{name}: owned by {department} (was {previous or 'nobody'}); {moved} sharing request(s) now go to it")


async def _known_service(session: Any, name: str) -> None:
    """A built-in service or a registered upstream; anything else is refused with the names there are."""
    from gateway.http.problems import Problem
    from gateway.storage.models import RegisteredUpstream
    from gateway.upstreams.registry import BUILT_IN
    from schemas.problems import ProblemCode

    if name in BUILT_IN or await session.get(RegisteredUpstream, name) is not None:
        return
    raise Problem(
        ProblemCode.UNKNOWN_SERVICE,
        f"no service {name!r}: built-in ones are {', '.join(sorted(BUILT_IN))}; `msjx-gateway upstreams list` shows"
        " the registered ones",
    )


@upstreams_app.command("remove")
def upstreams_remove(name: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Remove a registered upstream and revoke its grants; every node stops offering it within about a second."""
    from gateway.upstreams.registry import remove_upstream

    out, revoked = _audited(
        cli_settings(data_dir),
        "upstream.remove",
        name,
        {},
        lambda session: remove_upstream(session, name, SYSTEM_CLOCK.now()),
        lambda result: {"name": result[0].name, "grants_revoked": result[1]},
    )
    typer.echo(f"removed {out.name}; {revoked} grant(s) revoked")


def _audited(settings: Any, event: str, name: str, request: dict[str, Any], work: Any, answer: Any) -> Any:
    """A change to the upstreams made here is on the record like the API's (gateway/cli/audited.py)."""
    from gateway.cli.audited import CliAction, in_session, run_audited
    from gateway.http.problems import Problem

    command = f"msjx-gateway upstreams {event.split('.', 1)[1]} {name}"
    action = CliAction(event, operator_name(), command, request, service=name[:64], roles=("admin",))
    return run_audited(settings, action, in_session(work), answer, refusals=(Problem,))
