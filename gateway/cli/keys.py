"""`msjx-gateway keys`: audit data keys, the master and signing keys, node keys, and a new caller's key pair."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import (
    WHEN_HELP,
    DataDir,
    T,
    beijing,
    cli_settings,
    epoch_ms,
    fail,
    operator_name,
    parse_when,
    run_engine,
)
from gateway.clock import SYSTEM_CLOCK
from gateway.settings import Settings

keys_app = typer.Typer(
    help="Audit keys: data keys (rotate, destroy), the master key, the signing key; and a new caller's key pair.",
    no_args_is_help=True,
)


def _keyring(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from gateway.audit.keys import open_keyring
    from security.keyring import KeyRingError

    async def with_ring(engine: Any) -> T:
        return await work(await open_keyring(settings, engine))

    try:
        return run_engine(settings, with_ring)
    except KeyRingError as exc:
        raise fail(str(exc), 1) from None


def _stamp(ms: int | None) -> str:
    from schemas.times import beijing_ms

    return "-" if ms is None else beijing_ms(ms)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """The master key (by id), every data key and its state, and this node's checkpoint signing key."""
    from gateway.audit.signer import SIGNING_FILES, load_signer
    from security.checkpoints import signer_key_id

    settings = cli_settings(data_dir)

    async def work(ring: Any) -> None:
        current = {ring.current(suite).key_id for suite in ("standard", "sm") if _has_current(ring, suite)}
        typer.echo(f"master key  {ring.master.key_id}  from {ring.master.source}")
        for row in ring.rows():
            if row.destroyed:
                state = f"destroyed {_stamp(row.destroyed_ms)}"
            elif row.kind == "index":
                state = "subject and body digests"
            else:
                state = "current" if row.key_id in current else "retired (opens old payloads)"
            typer.echo(f"{row.kind:<6} {row.key_id:<36} {row.suite:<9} created {_stamp(row.created_ms)}  {state}")

    _keyring(settings, work)
    load_signer(settings)  # the configured suite's key exists from here on
    for suite, (_, key_file, public_file) in SIGNING_FILES.items():
        if not (settings.keys_dir / key_file).exists():
            continue
        signer = load_signer(settings, suite)
        use = "in use" if suite == settings.crypto_suite else "signed earlier checkpoints"
        typer.echo(
            f"signing {signer_key_id(signer.public_key())}  checkpoint key of chain {settings.node_id}"
            f" ({suite} suite, {use}); public half: {settings.keys_dir / public_file}"
        )


def _has_current(ring: Any, suite: str) -> bool:
    try:
        ring.current(suite)
    except Exception:  # a suite never used has no current key
        return False
    return True


@keys_app.command("rotate")
def keys_rotate(
    suite: Annotated[
        list[str], typer.Option("--suite", help="standard or sm (default: every suite in use and MSJX_CRYPTO_SUITE)")
    ] = [],  # noqa: B006
    data_dir: DataDir = None,
) -> None:
    """Start new data keys now; every running node seals with them within about a second, no restart needed."""
    from security.crypto import SUITE_NAMES

    for name in suite:
        if name not in SUITE_NAMES:
            raise fail(f"--suite {name!r}: expected one of {', '.join(SUITE_NAMES)}")
    settings = cli_settings(data_dir)
    made = _keyring(settings, lambda ring: ring.rotate(suite or None))
    for row in made:
        typer.echo(f"new data key {row.key_id} ({row.suite}); older keys still open their payloads")


@keys_app.command("destroy")
def keys_destroy(
    before: Annotated[str, typer.Option("--before", help=f"destroy data keys retired before this: {WHEN_HELP}")],
    force: Annotated[
        bool, typer.Option("--force", help="allow a date inside the retention period (MSJX_AUDIT_RETENTION_DAYS)")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Crypto-shred: destroy data keys that stopped sealing before DATE. Their payloads can never be opened
    again; the chain, which covers ciphertext digests, still verifies. The current keys are never destroyed."""
    settings = cli_settings(data_dir)
    cutoff = parse_when(before, "--before")
    now = SYSTEM_CLOCK.now()
    limit = now - timedelta(days=settings.audit_retention_days)
    if cutoff > now:
        raise fail("--before is in the future")
    if cutoff > limit and not force:
        raise fail(
            f"--before {beijing(cutoff)} is inside the retention period ({settings.audit_retention_days} days,"
            f" until {beijing(limit)}): payloads must stay readable that long. Use --force to destroy anyway."
        )
    destroyed = _keyring(settings, lambda ring: ring.destroy_before(epoch_ms(cutoff)))
    if not destroyed:
        typer.echo(f"no data key was retired before {beijing(cutoff)}")
    for row in destroyed:
        typer.echo(f"destroyed data key {row.key_id} ({row.suite}, created {_stamp(row.created_ms)})")


@keys_app.command("public")
def keys_public(
    suite: Annotated[
        str | None, typer.Option("--suite", help="standard (Ed25519) or sm (SM2); default: MSJX_CRYPTO_SUITE")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Print this node's checkpoint public key (PEM), for `audit verify --pubkey` on another machine."""
    from gateway.audit.signer import load_signer
    from security.crypto import SUITE_NAMES
    from security.keys import public_key_pem

    if suite is not None and suite not in SUITE_NAMES:
        raise fail(f"--suite {suite!r}: expected one of {', '.join(SUITE_NAMES)}")
    typer.echo(public_key_pem(load_signer(cli_settings(data_dir), suite).public_key()), nl=False)


nodes_app = typer.Typer(
    help="Node keys: the checkpoint key each node registers in the database; pin or revoke them.",
    no_args_is_help=True,
)


keys_app.add_typer(nodes_app, name="nodes")


@nodes_app.command("list")
def nodes_list(data_dir: DataDir = None) -> None:
    """Every node key: chain, key id, algorithm, status (self-registered, pinned, revoked), who and when."""
    from gateway.audit.node_keys import list_node_keys

    keys = run_engine(cli_settings(data_dir), list_node_keys)
    if not keys:
        typer.echo("no node key registered yet (a node registers its own when it first starts)")
    for key in keys:
        line = f"{key.chain_id:<16} {key.key_id:<25} {key.algorithm:<8} {key.status:<15}"
        line += f" registered {_stamp(key.registered_ms)}"
        if key.pinned_by is not None:
            line += f"  pinned by {key.pinned_by} {_stamp(key.pinned_ms)} (signed by {key.pin_signer})"
        if key.revoked_by is not None:
            line += (
                f"  revoked by {key.revoked_by} {_stamp(key.revoked_ms)}, its checkpoints accepted through height"
                f" {key.revoked_height or 0}"
            )
        typer.echo(line)


@nodes_app.command("pin")
def nodes_pin(
    key_id: Annotated[str, typer.Argument(help="the key id `keys nodes list` shows, e.g. ed25519:0123456789abcdef")],
    by: Annotated[str | None, typer.Option("--by", help="who pins it (default: the login name)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Pin a node key after checking it out of band (compare its key id with the one `keys list` prints on that
    node). The pin is signed with this node's checkpoint key, so every node that trusts this one trusts the pin."""
    from gateway.audit.node_keys import NodeKeyError, pin_node_key
    from gateway.audit.signer import load_signer
    from gateway.cli.audited import CliAction, run_audited

    settings = cli_settings(data_dir)
    signer = load_signer(settings)
    who = by or operator_name()
    action = CliAction("node_key.pin", who, f"msjx-gateway keys nodes pin {key_id}", {"key_id": key_id}, key_id[:64])
    key = run_audited(
        settings,
        action,
        lambda engine: pin_node_key(engine, key_id, who, signer),
        lambda key: key.to_dict(),
        refusals=(NodeKeyError,),
        refusal_exit=2,
    )
    typer.echo(f"pinned {key.key_id} (chain {key.chain_id}, {key.algorithm}) by {who}; pin signed by {key.pin_signer}")


@nodes_app.command("revoke")
def nodes_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id `keys nodes list` shows")],
    by: Annotated[str | None, typer.Option("--by", help="who revokes it (default: the login name)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke a node key (lost or stolen): its checkpoints above the last one it signed so far no longer verify;
    that last one is recorded and must stay, so nothing it signed before can be rewritten either."""
    from gateway.audit.node_keys import NodeKeyError, revoke_node_key
    from gateway.cli.audited import CliAction, run_audited

    who = by or operator_name()
    # On the record of the CLI's chain as well as in the node-key table: the revocation (with the height it holds
    # from) stays provable by the hash-linked, checkpoint-signed log even if the table's row were edited.
    action = CliAction(
        "node_key.revoke", who, f"msjx-gateway keys nodes revoke {key_id}", {"key_id": key_id}, key_id[:64]
    )
    key = run_audited(
        cli_settings(data_dir),
        action,
        lambda engine: revoke_node_key(engine, key_id, who),
        lambda key: key.to_dict(),
        refusals=(NodeKeyError,),
        refusal_exit=2,
    )
    typer.echo(
        f"revoked {key.key_id} (chain {key.chain_id}) by {who}; its checkpoints are accepted through height"
        f" {key.revoked_height or 0} and no further: the node needs a new key (move its keys/audit-signing.key aside"
        " and restart it)"
    )


@keys_app.command("new-caller")
def keys_new_caller(
    caller_id: Annotated[str, typer.Argument(help="the caller id the key pair is for, e.g. platform")],
    out: Annotated[
        Path | None, typer.Option(help="where the private key goes (default: ./<caller>.pem); the public key beside it")
    ] = None,
    algorithm: Annotated[
        str, typer.Option("--algorithm", help="ed25519, or sm2-sm3 (国密 SM2) for callers whose rules demand it")
    ] = "ed25519",
) -> None:
    """Make a caller's key pair (Ed25519, or SM2 with --algorithm sm2-sm3) on the caller's side: the private key to a
    file (mode 0600), never to the gateway; prints the public key and the key id that `callers add --public-key`
    registers."""
    from security.keys import KeyFormatError, generate, key_id_for, private_key_pem, public_key_pem, write_secret_file
    from security.verdicts import ALGORITHMS

    private_file = out or Path(f"{caller_id}.pem")
    public_file = private_file.with_name(private_file.name.removesuffix(".pem") + ".pub.pem")
    for path in (private_file, public_file):
        if path.exists():
            raise fail(f"{path} exists; a key is never overwritten (remove it, or give --out)")
    if algorithm not in ALGORITHMS:
        raise fail(f"--algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    try:
        key = generate(algorithm)
    except KeyFormatError as exc:
        raise fail(str(exc)) from None
    public_pem = public_key_pem(key.public_key())
    try:
        write_secret_file(private_file, private_key_pem(key))
        public_file.write_text(public_pem)
    except OSError as exc:
        raise fail(f"cannot write the key pair: {exc.strerror}: {exc.filename}") from None
    typer.echo(f"private key {private_file} (mode 0600): keep it with the caller; the gateway never needs it")
    typer.echo(f"public key  {public_file}")
    typer.echo(f"key id      {key_id_for(caller_id, key.public_key())}")
    typer.echo(public_pem, nl=False)
