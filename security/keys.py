"""Key material on disk: Ed25519 key pairs for callers and the gateway, and symmetric secrets, written mode 0600."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class KeyFormatError(ValueError):
    """A key could not be read; the message never contains key material."""


def generate_ed25519() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_key_raw_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id_for(caller_id: str, public_key: Ed25519PublicKey) -> str:
    """`<caller>.<fingerprint>`: the key id the CLI and the client derive from a caller id and a key alone."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{caller_id}.{hashlib.sha256(raw).hexdigest()[:12]}"


def load_public_key(text: str) -> Ed25519PublicKey:
    """Read an Ed25519 public key given as PEM (SubjectPublicKeyInfo) or as base64 of the 32 raw bytes."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            raw = base64.b64decode(text, validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyFormatError("not an Ed25519 public key in PEM or base64 form") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError("the key is not an Ed25519 key")
    return key


def load_private_key_file(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFormatError(f"cannot read an Ed25519 private key (PKCS#8 PEM) from {path}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"{path} does not hold an Ed25519 key")
    return key


def write_secret_file(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, creating it with mode 0600 so it is never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def load_or_create_secret(path: Path, size: int = 32) -> bytes:
    """Read a symmetric secret, generating it on first use."""
    if path.exists():
        data = path.read_bytes()
        if len(data) != size:
            raise KeyFormatError(f"{path} holds {len(data)} bytes, expected {size}")
        return data
    data = secrets.token_bytes(size)
    write_secret_file(path, data)
    return data


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return load_private_key_file(path)
    key = generate_ed25519()
    write_secret_file(path, private_key_pem(key))
    return key
