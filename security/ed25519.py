"""One Ed25519 check on raw bytes, through libsodium when PyNaCl is there and OpenSSL otherwise.

Kept apart from `signatures` so that the verifier process (`security.verifier_child`) imports only this (and, for
SM2 keys, `security.sm2`), through `security.verdicts`.
"""

from __future__ import annotations

import functools
from typing import Any

try:  # libsodium verifies Ed25519 in about half the time OpenSSL takes here (docs/performance.md)
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey
except ImportError:  # pragma: no cover - PyNaCl is a dependency; without it OpenSSL verifies
    VerifyKey = None  # type: ignore[assignment,misc]


@functools.lru_cache(maxsize=1024)
def _sodium_key(raw: bytes) -> VerifyKey:
    return VerifyKey(raw)


@functools.lru_cache(maxsize=1024)
def _openssl_key(raw: bytes) -> Any:
    # Imported here: the verifier process, which has PyNaCl, is ~7 MB smaller without OpenSSL's bindings.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public_key`'s Ed25519 signature of `message`; False for anything else.

    libsodium refuses whatever OpenSSL refuses and more (non-canonical encodings, small-order points), so a
    signature it accepts OpenSSL accepts too; callers that must match OpenSSL's verdict exactly ask it after a False.
    """
    if VerifyKey is not None:
        try:
            _sodium_key(public_key).verify(message, signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True
    from cryptography.exceptions import InvalidSignature

    try:
        _openssl_key(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
