"""`msjx-gateway callers`: register callers, their public keys and client certificates; list them, revoke them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import DataDir, cli_settings, fail, request_body, run_registry

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
    from gateway.access import callers
    from schemas.api import CallerIn, KeyIn
    from security.keys import KeyFormatError, key_id_for, load_public_key

    keys = []
    if public_key is not None:
        try:
            text = public_key.read_bytes().decode("utf-8")
        except OSError as exc:
            raise fail(f"--public-key: cannot read {public_key}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise fail(f"--public-key: {public_key} is not text (PEM, base64 or hex)") from None
        if "PRIVATE KEY-----" in text:  # the caller's secret, which should never leave its owner
            raise fail(f"--public-key: {public_key} holds a private key; give its public half")
        try:
            key = load_public_key(text)
        except KeyFormatError as exc:
            raise fail(f"--public-key: {exc}") from None
        keys.append(request_body(KeyIn, key_id=key_id or key_id_for(caller_id, key), public_key=text))
    body = request_body(CallerIn, caller_id=caller_id, name=name, department=department, roles=role, keys=keys)
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


@callers_app.command("add-cert")
def callers_add_cert(
    caller_id: Annotated[str, typer.Argument(help="caller id, e.g. district-tax")],
    cert: Annotated[
        Path | None, typer.Option("--cert", help="the caller's client certificate (PEM or DER): its SHA-256 is kept")
    ] = None,
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="the certificate's SHA-256 fingerprint, hex (colons allowed)")
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option("--ca", help="an issuing CA you trust (PEM): every certificate it issued is this caller"),
    ] = None,
    subject_cn: Annotated[
        str | None, typer.Option("--subject-cn", help="with --ca: only certificates with this subject CN")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Register a client certificate for mutual TLS (the SOAP façade's legacy callers): one certificate by its
    fingerprint, or the certificates an issuing CA issued. The chain itself is verified by the TLS listener
    (MSJX_TLS_CLIENT_CA) or by the trusted proxy in front."""
    from gateway.access.certificates import CertificateError, add_cert

    try:
        certificate = cert.read_bytes() if cert is not None else None
        authority = ca.read_bytes() if ca is not None else None
    except OSError as exc:
        raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None

    async def register(session: object) -> dict[str, object]:
        return await add_cert(
            session,  # type: ignore[arg-type]
            caller_id,
            certificate=certificate,
            fingerprint=fingerprint,
            ca=authority,
            subject_cn=subject_cn,
        )

    try:
        out = run_registry(cli_settings(data_dir), register)
    except CertificateError as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False))


@callers_app.command("list-certs")
def callers_list_certs(
    caller_id: Annotated[str | None, typer.Argument(help="only this caller's")] = None, data_dir: DataDir = None
) -> None:
    """List registered client certificates."""
    from gateway.access.certificates import list_certs

    for row in run_registry(cli_settings(data_dir), lambda session: list_certs(session, caller_id)):
        what = row["fingerprint"] if row["kind"] == "fingerprint" else f"CA {row['fingerprint']}"
        narrowed = f" CN={row['subject_cn']}" if row["subject_cn"] else ""
        typer.echo(f"{row['cert_id']}  {row['caller_id']:<16} {row['status']:<8} {what}{narrowed}")


@callers_app.command("revoke-cert")
def callers_revoke_cert(cert_id: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Revoke a registered client certificate; the next call with it is refused."""
    from gateway.access.certificates import revoke_cert

    out = run_registry(cli_settings(data_dir), lambda session: revoke_cert(session, cert_id))
    typer.echo(f"certificate {out['cert_id']} is {out['status']}")
