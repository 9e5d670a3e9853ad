"""`msjx-gateway call`: one signed call to a running gateway, as the platform makes it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import fail, gateway_target


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

    from gateway.client import GatewayClient, GatewayError
    from security.keys import KeyFormatError, key_id_for, load_private_key_file

    params = _call_params(param, json_params)
    idempotency_key = idempotency_key or _default_idempotency_key(operation, params)
    if idempotency_key is not None:
        typer.echo(f"Idempotency-Key: {idempotency_key}", err=True)
    try:
        private_key = load_private_key_file(key)
    except KeyFormatError as exc:
        raise fail(f"--key: {exc}") from None
    resolved_key_id = key_id or key_id_for(caller, private_key.public_key())
    target = gateway_target(url)
    try:
        with GatewayClient(target, resolved_key_id, private_key) as client:
            answer, replayed = client.call(service, operation, purpose, params, idempotency_key=idempotency_key)
    except GatewayError as exc:
        typer.echo(json.dumps(exc.problem, ensure_ascii=False, indent=2))
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {target}: {exc}") from None
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
            raise fail(f"--json-params: cannot read {json_params}: {exc.strerror}") from None
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise fail(f"--json-params: not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise fail("--json-params: expected a JSON object of params")
        params.update(loaded)
    for item in param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise fail(f"--param {item!r}: expected NAME=VALUE")
        if name in params:
            raise fail(f"--param {name}: given twice (or in --json-params too)")
        params[name] = value
    return params


def _default_idempotency_key(operation: str, params: dict[str, Any]) -> str | None:
    """A payment's key follows its voucher number, so repeating the same voucher can never pay it twice."""
    if operation != "submit-voucher":
        return None
    voucher_no = params.get("voucher_no")
    return f"voucher-{voucher_no}" if isinstance(voucher_no, str) and voucher_no else None
