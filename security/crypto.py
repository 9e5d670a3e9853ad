"""Payload encryption for the audit log: AES-256-GCM under a named data key, bound to the record by associated data."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_SIZE = 12


class DecryptionError(Exception):
    """A payload could not be opened: wrong or destroyed key, or changed ciphertext."""


@dataclass(frozen=True)
class DataKey:
    """A symmetric key that seals payloads; `key_id` is stored beside every ciphertext it made."""

    key_id: str
    secret: bytes
    suite: str = "standard"

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("an AES-256 data key is 32 bytes")


def seal(key: DataKey, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt; the result is nonce ‖ ciphertext ‖ tag."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + AESGCM(key.secret).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: DataKey, sealed: bytes, associated_data: bytes) -> bytes:
    if len(sealed) < NONCE_SIZE + 16:
        raise DecryptionError("sealed payload is too short")
    try:
        return AESGCM(key.secret).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated_data)
    except InvalidTag as exc:
        raise DecryptionError(f"payload does not open with key {key.key_id}") from exc


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of an identifier, so officers can search by subject without the log holding it in clear."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
