"""This node's checkpoint signing key, and the public keys `audit verify` and archiving trust."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.node_keys import build_trust, list_node_keys
from gateway.settings import Settings
from security.checkpoints import TrustedKeys
from security.key_trust import KeyTrust
from security.keys import (
    ED25519,
    SM2_SM3,
    KeyFormatError,
    PrivateKey,
    PublicKey,
    load_or_create_signing_key,
    load_public_key,
    public_key_pem,
    write_secret_file,
)

SIGNING_KEY_FILE = "audit-signing.key"
SIGNING_PUB_FILE = "audit-signing.pub.pem"
# The checkpoint key of each suite: Ed25519 for `standard`, SM2 (SM3, default user id) for `sm`, in its own file, so
# a node that changes suite keeps the old key and every checkpoint it signed still verifies.
SIGNING_FILES = {
    "standard": (ED25519, SIGNING_KEY_FILE, SIGNING_PUB_FILE),
    "sm": (SM2_SM3, "audit-signing-sm2.key", "audit-signing-sm2.pub.pem"),
}


def load_signer(settings: Settings, suite: str | None = None) -> PrivateKey:
    """This node's checkpoint signing key for `suite` (default: the configured one), made on first run (mode 0600),
    Ed25519 for `standard` and SM2 for `sm`; its public half is written beside it."""
    algorithm, key_file, public_file = SIGNING_FILES[suite or settings.crypto_suite]
    key = load_or_create_signing_key(settings.signing_keys_dir / key_file, algorithm)
    public_path = settings.signing_keys_dir / public_file
    pem = public_key_pem(key.public_key())
    if not public_path.exists() or public_path.read_text() != pem:
        write_secret_file(public_path, pem.encode())
        os.chmod(public_path, 0o644)  # a public key: readable by whoever verifies
    return key


def local_keys(settings: Settings | None, extra: list[Path] | tuple[Path, ...] = ()) -> list[PublicKey]:
    """Public keys the verifier holds itself: this node's own (of either suite) and its `serve --workers` workers',
    every PEM in keys/trusted/, any given on the command line. They owe nothing to the database."""
    keys = []
    if settings is not None:
        own_dirs = [settings.keys_dir, *sorted((settings.keys_dir / "workers").glob("*/"))]
        for directory in own_dirs:
            for algorithm, key_file, _ in SIGNING_FILES.values():
                own = directory / key_file
                if own.exists():
                    keys.append(load_or_create_signing_key(own, algorithm).public_key())
        directory = settings.trusted_keys_dir
        if directory.is_dir():
            for path in sorted(directory.glob("*.pem")):
                keys.append(_read_public_key(path))
    for path in extra:
        keys.append(_read_public_key(path))
    return keys


def trusted_keys(settings: Settings | None, extra: list[Path] | tuple[Path, ...] = ()) -> TrustedKeys:
    """The local keys alone (see `local_keys`): what archiving and an offline file check trust."""
    return TrustedKeys(local_keys(settings, extra))


async def node_trust(
    engine: AsyncEngine, settings: Settings | None, extra: list[Path] | tuple[Path, ...] = ()
) -> KeyTrust:
    """What `audit verify` trusts: the local keys, and every node key registered in the database, each by its
    standing (pinned, self-registered, revoked), so every node verifies every chain without copied key files."""
    from schemas.times import beijing_ms

    return build_trust(local_keys(settings, extra), await list_node_keys(engine), stamp=beijing_ms)


def _read_public_key(path: Path) -> PublicKey:
    try:
        return load_public_key(path.read_text())
    except OSError as exc:
        raise KeyFormatError(f"cannot read public key {path}: {exc.strerror}") from None
    except KeyFormatError as exc:
        raise KeyFormatError(f"{path}: {exc}") from None
