"""Signed checkpoints of an audit chain (chain id, height, head hash, time), like Certificate Transparency's tree heads.

A checkpoint is signed with the node's key (Ed25519 in the `standard` suite, SM2 with SM3 and the default user id
in the `sm` suite), so a chain rewritten by someone who can write to the database but does not hold that key no
longer matches a checkpoint that verifies. The verifier is given the public keys (`TrustedKeys`); keys that nodes
register in the database come with a standing that says how far to trust them (security/key_trust.py). The key
id names the algorithm (`ed25519:…`, `sm2:…`) and is part of the signed bytes, so a chain may hold checkpoints of
both, as it holds records of both suites.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature

from security.keys import PrivateKey, PublicKey, public_key_bytes
from security.sm2 import Sm2PublicKey

DOMAIN = b"msjx-audit-checkpoint/1\n"


def signer_key_id(public_key: PublicKey) -> str:
    """`ed25519:` or `sm2:`, then the first 16 hex digits of SHA-256 of the raw public key: names a key, reveals
    nothing. The raw key of SM2 is the uncompressed point 04 ‖ x ‖ y."""
    prefix = "sm2:" if isinstance(public_key, Sm2PublicKey) else "ed25519:"
    return prefix + hashlib.sha256(public_key_bytes(public_key)).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    chain_id: str
    height: int
    head_hash: str
    ts_ms: int
    key_id: str
    signature: str  # base64 of the 64-byte signature: Ed25519's, or SM2's r ‖ s

    def message(self) -> bytes:
        return checkpoint_message(self.chain_id, self.height, self.head_hash, self.ts_ms, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        return cls(
            chain_id=str(data["chain_id"]),
            height=int(data["height"]),
            head_hash=str(data["head_hash"]),
            ts_ms=int(data["ts_ms"]),
            key_id=str(data["key_id"]),
            signature=str(data["signature"]),
        )


def checkpoint_message(chain_id: str, height: int, head_hash: str, ts_ms: int, key_id: str) -> bytes:
    """The signed bytes: a domain tag, then sorted-key JSON of every field but the signature."""
    body = {"chain_id": chain_id, "head_hash": head_hash, "height": height, "key_id": key_id, "ts_ms": ts_ms}
    return DOMAIN + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_checkpoint(private_key: PrivateKey, chain_id: str, height: int, head_hash: str, ts_ms: int) -> Checkpoint:
    key_id = signer_key_id(private_key.public_key())
    signature = private_key.sign(checkpoint_message(chain_id, height, head_hash, ts_ms, key_id))
    return Checkpoint(chain_id, height, head_hash, ts_ms, key_id, base64.b64encode(signature).decode())


class TrustedKeys:
    """The public keys a verifier accepts checkpoints from, by key id."""

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: PublicKey) -> str:
        key_id = signer_key_id(key)
        self._keys[key_id] = key
        return key_id

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def check(self, checkpoint: Checkpoint) -> str | None:
        """None when the checkpoint is signed by a trusted key; otherwise why not."""
        key = self._keys.get(checkpoint.key_id)
        if key is None:
            return f"it is signed by {checkpoint.key_id}, which is not a trusted key"
        failed = f"its signature does not verify under the trusted key {checkpoint.key_id}"
        try:
            signature = base64.b64decode(checkpoint.signature, validate=True)
            if isinstance(key, Sm2PublicKey):
                return None if key.verify(signature, checkpoint.message()) else failed
            key.verify(signature, checkpoint.message())
        except (InvalidSignature, ValueError):
            return failed
        return None
