"""Key material on disk: Ed25519 or SM2 key pairs for callers and the gateway, and symmetric secrets, written mode 0600.

A caller's or node's key is Ed25519 (RFC 9421 `ed25519`) or SM2 (our `sm2-sm3`, for callers whose rules demand 国密);
everything here takes either and tells them apart by their encoding.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import MsjxError
from security import sm2
from security.sm2 import Sm2Error, Sm2PrivateKey, Sm2PublicKey
from security.verdicts import ED25519, SM2_SM3

PublicKey = Ed25519PublicKey | Sm2PublicKey
PrivateKey = Ed25519PrivateKey | Sm2PrivateKey


class KeyFormatError(MsjxError, ValueError):
    """A key could not be read; the message never contains key material."""


def generate_ed25519() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def generate(algorithm: str = ED25519) -> PrivateKey:
    if algorithm == SM2_SM3:
        return Sm2PrivateKey.generate()
    if algorithm == ED25519:
        return generate_ed25519()
    raise KeyFormatError(f"unknown signature algorithm {algorithm!r}; known: {ED25519}, {SM2_SM3}")


def algorithm_of(key: PublicKey | PrivateKey) -> str:
    """The RFC 9421 algorithm name a key signs with."""
    return SM2_SM3 if isinstance(key, Sm2PublicKey | Sm2PrivateKey) else ED25519


def private_key_pem(key: PrivateKey) -> bytes:
    if isinstance(key, Sm2PrivateKey):
        return key.pem()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: PublicKey) -> str:
    if isinstance(key, Sm2PublicKey):
        return key.pem()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def public_key_raw_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id_for(caller_id: str, public_key: PublicKey) -> str:
    """`<caller>.<fingerprint>`: the key id the CLI and the client derive from a caller id and a key alone. The
    fingerprint is of the raw key: Ed25519's 32 bytes, SM2's point 04 ‖ x ‖ y."""
    return f"{caller_id}.{hashlib.sha256(public_key_bytes(public_key)).hexdigest()[:12]}"


def public_key_bytes(key: PublicKey) -> bytes:
    """The raw public key: Ed25519's 32 bytes, or SM2's uncompressed point 04 ‖ x ‖ y (65 bytes)."""
    if isinstance(key, Sm2PublicKey):
        return key.to_bytes()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(text: str) -> PublicKey:
    """Read a public key: Ed25519 as PEM (SubjectPublicKeyInfo) or base64 of the 32 raw bytes; SM2 as PEM
    (SubjectPublicKeyInfo, curve 1.2.156.10197.1.301) or hex of the point, 04 ‖ x ‖ y (130 digits) or x ‖ y (128)."""
    text = text.strip()
    if sm2.is_sm2_public_text(text):
        try:
            return sm2.load_public_key(text)
        except Sm2Error as exc:
            raise KeyFormatError(str(exc)) from None
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            raw = base64.b64decode(text, validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyFormatError(
            "not an Ed25519 public key (PEM or base64) nor an SM2 one (PEM or hex of the point)"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError("the key is neither an Ed25519 nor an SM2 key")
    return key


def load_private_key_file(path: Path) -> PrivateKey:
    """An Ed25519 (PKCS#8 PEM) or SM2 (PKCS#8 or SEC 1 PEM) private key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFormatError(f"cannot read a private key from {path}: {exc.strerror}") from None
    if sm2.is_sm2_private_pem(data):
        try:
            return sm2.load_private_key(data)
        except Sm2Error as exc:
            raise KeyFormatError(f"{path}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"cannot read an Ed25519 or SM2 private key (PKCS#8 PEM) from {path}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"{path} holds neither an Ed25519 nor an SM2 key")
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


def load_or_create_signing_key(path: Path, algorithm: str = ED25519) -> PrivateKey:
    if path.exists():
        key = load_private_key_file(path)
        if algorithm_of(key) != algorithm:
            raise KeyFormatError(f"{path} holds an {algorithm_of(key)} key, not an {algorithm} key")
        return key
    key = generate(algorithm)
    write_secret_file(path, private_key_pem(key))
    return key
