"""One request-signature verdict on raw bytes, for each algorithm a caller's key may have: Ed25519 or SM2.

What the verifier process and the event loop both run. SM2 (`security.sm2`, pure Python, ~0.2 s to import) is
imported on the first SM2 check, so a process that only ever sees Ed25519 keys never loads it.
"""

from __future__ import annotations

from typing import Protocol

from security.ed25519 import verifies as ed25519_verifies

ED25519 = "ed25519"
SM2_SM3 = "sm2-sm3"  # our name, in RFC 9421's `alg` sense, for SM2 with SM3 and the default user id (no IANA entry)
ALGORITHMS = (ED25519, SM2_SM3)


class SignatureChecker(Protocol):
    """What authentication needs: one verdict, awaited (in this process, or in the verifier process)."""

    async def verify(self, public_key: bytes, signature: bytes, message: bytes, algorithm: str = ED25519) -> bool: ...

    async def close(self) -> None: ...


def verifies(public_key: bytes, signature: bytes, message: bytes, algorithm: str = ED25519) -> bool:
    """True when `signature` is `public_key`'s signature of `message` under `algorithm`; False for anything else.

    `public_key` is Ed25519's 32 raw bytes, or SM2's uncompressed point 04 ‖ x ‖ y.
    """
    if algorithm == ED25519:
        return ed25519_verifies(public_key, signature, message)
    if algorithm == SM2_SM3:
        from security.sm2 import verifies as sm2_verifies

        return sm2_verifies(public_key, signature, message)
    return False
