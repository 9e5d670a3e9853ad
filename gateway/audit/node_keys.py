"""Node keys in the database: each node registers its checkpoint public key; operators pin or revoke them;
verification builds its trust from them (see security/key_trust.py for the standings and the rules)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage.models import AuditCheckpoint, AuditSigner
from schemas.errors import MsjxError
from security.checkpoints import TrustedKeys, sign_checkpoint, signer_key_id
from security.key_trust import (
    CARRIED,
    LOCAL,
    PIN_CHAIN_PREFIX,
    PINNED,
    SELF_REGISTERED,
    KeyStanding,
    KeyTrust,
    pin_checkpoint,
    pin_digest,
    signs_for,
)
from security.keyring import now_ms
from security.keys import KeyFormatError, load_public_key, public_key_pem

log = logging.getLogger("msjx.audit")
NODE_KEYS = AuditSigner.__table__
CHECKPOINTS = AuditCheckpoint.__table__
REVOKED = "revoked"


class NodeKeyError(MsjxError):
    """An operator's pin or revocation that cannot be done (unknown key, already revoked); the message says why."""


@dataclass(frozen=True)
class NodeKey:
    key_id: str
    chain_id: str
    algorithm: str
    public_key: str
    registered_ms: int
    status: str
    pinned_by: str | None = None
    pinned_ms: int | None = None
    pin_signer: str | None = None
    pin_signature: str | None = None
    revoked_by: str | None = None
    revoked_ms: int | None = None
    revoked_height: int | None = None
    revoked_head: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> NodeKey:
        return cls(
            key_id=row.key_id,
            chain_id=row.chain_id,
            algorithm=row.algorithm,
            public_key=row.public_key,
            registered_ms=int(row.created_ms),
            status=row.status,
            pinned_by=row.pinned_by,
            pinned_ms=row.pinned_ms,
            pin_signer=row.pin_signer,
            pin_signature=row.pin_signature,
            revoked_by=row.revoked_by,
            revoked_ms=row.revoked_ms,
            revoked_height=row.revoked_height,
            revoked_head=row.revoked_head,
        )

    def to_dict(self) -> dict[str, Any]:
        """What an export file carries and the API shows: never a pin's signature detail beyond who signed it."""
        return {
            "key_id": self.key_id,
            "chain_id": self.chain_id,
            "algorithm": self.algorithm,
            "public_key": self.public_key,
            "status": self.status,
        }


def algorithm_of(key_id: str) -> str:
    """The algorithm a key id names (`ed25519:…`, `sm2:…`)."""
    return key_id.split(":", 1)[0]


async def register_node_key(engine: AsyncEngine, chain_id: str, public_key: Any, when_ms: int) -> NodeKey:
    """Register this node's checkpoint key once (self-registered); return its row as it stands, pinned or revoked."""
    key_id = signer_key_id(public_key)
    async with engine.begin() as connection:
        known = (await connection.execute(select(NODE_KEYS).where(NODE_KEYS.c.key_id == key_id))).first()
        if known is None:
            await connection.execute(
                insert(NODE_KEYS).values(
                    key_id=key_id,
                    chain_id=chain_id,
                    public_key=public_key_pem(public_key),
                    created_ms=when_ms,
                    algorithm=algorithm_of(key_id),
                    status=SELF_REGISTERED,
                )
            )
            known = (await connection.execute(select(NODE_KEYS).where(NODE_KEYS.c.key_id == key_id))).first()
    node_key = NodeKey.from_row(known)
    if node_key.status == REVOKED:
        log.error(
            "this node's checkpoint key %s was revoked by %s; its new checkpoints will not verify: give the node a"
            " new key (move %s aside and restart)",
            key_id,
            node_key.revoked_by,
            "keys/audit-signing.key",
        )
    elif not signs_for(node_key.chain_id, chain_id):
        log.warning("checkpoint key %s is registered for chain %s, not %s", key_id, node_key.chain_id, chain_id)
    return node_key


async def list_node_keys(engine: AsyncEngine) -> list[NodeKey]:
    async with engine.connect() as connection:
        result = await connection.execute(select(NODE_KEYS).order_by(NODE_KEYS.c.chain_id, NODE_KEYS.c.created_ms))
        return [NodeKey.from_row(row) for row in result]


async def _one(engine: AsyncEngine, key_id: str) -> NodeKey:
    async with engine.connect() as connection:
        row = (await connection.execute(select(NODE_KEYS).where(NODE_KEYS.c.key_id == key_id))).first()
    if row is None:
        raise NodeKeyError(f"no node key {key_id!r}; `msjx-gateway keys nodes list` shows the registered ones")
    return NodeKey.from_row(row)


async def pin_node_key(engine: AsyncEngine, key_id: str, by: str, signer: Any, when_ms: int | None = None) -> NodeKey:
    """Pin a registered key; the pin is signed with `signer` (the pinning node's own checkpoint key)."""
    key = await _one(engine, key_id)
    if key.status == REVOKED:
        raise NodeKeyError(f"node key {key_id} was revoked by {key.revoked_by}; a revoked key is never pinned again")
    when = now_ms() if when_ms is None else when_ms
    digest = pin_digest(key.key_id, key.chain_id, key.algorithm, key.public_key, by)
    signed = sign_checkpoint(signer, PIN_CHAIN_PREFIX + key_id, 0, digest, when)
    async with engine.begin() as connection:
        await connection.execute(
            update(NODE_KEYS)
            .where(NODE_KEYS.c.key_id == key_id, NODE_KEYS.c.status != REVOKED)
            .values(
                status=PINNED,
                pinned_by=by,
                pinned_ms=when,
                pin_signer=signed.key_id,
                pin_signature=signed.signature,
            )
        )
    return await _one(engine, key_id)


async def revoke_node_key(engine: AsyncEngine, key_id: str, by: str, when_ms: int | None = None) -> NodeKey:
    """Revoke a key; the last checkpoint it signed on its chain (height and head) is recorded as its limit."""
    key = await _one(engine, key_id)
    if key.status == REVOKED:
        raise NodeKeyError(f"node key {key_id} is already revoked (by {key.revoked_by})")
    when = now_ms() if when_ms is None else when_ms
    async with engine.begin() as connection:
        height = (
            await connection.execute(
                select(func.max(CHECKPOINTS.c.height)).where(
                    CHECKPOINTS.c.chain_id == key.chain_id, CHECKPOINTS.c.key_id == key_id
                )
            )
        ).scalar()
        head = None
        if height is not None:
            head = (
                await connection.execute(
                    select(CHECKPOINTS.c.head_hash).where(
                        CHECKPOINTS.c.chain_id == key.chain_id,
                        CHECKPOINTS.c.key_id == key_id,
                        CHECKPOINTS.c.height == height,
                    )
                )
            ).scalar()
        await connection.execute(
            update(NODE_KEYS)
            .where(NODE_KEYS.c.key_id == key_id)
            .values(
                status=REVOKED,
                revoked_by=by,
                revoked_ms=when,
                revoked_height=int(height) if height is not None else 0,
                revoked_head=head,
            )
        )
    return await _one(engine, key_id)


def _pin_verifies(key: NodeKey, trusted: TrustedKeys) -> bool:
    if key.pinned_by is None or key.pinned_ms is None or not key.pin_signer or not key.pin_signature:
        return False
    digest = pin_digest(key.key_id, key.chain_id, key.algorithm, key.public_key, key.pinned_by)
    return trusted.check(pin_checkpoint(key.key_id, digest, key.pinned_ms, key.pin_signer, key.pin_signature)) is None


def build_trust(local: list[Any], registered: list[NodeKey], *, stamp: Any = str) -> KeyTrust:
    """The verifier's trust: its `local` keys, then every registered key by its standing.

    A pin counts only when its signature verifies under a local key or under a key whose own pin counts (so pinning
    a new node from one trusted node is enough for every node that trusts that one); otherwise the key is only
    self-registered, whatever its status column says, since anyone who can write the database can write that.
    """
    trust = KeyTrust()
    for public in local:
        trust.add_standing(public, KeyStanding(signer_key_id(public), LOCAL))
    parsed: dict[str, Any] = {}
    for key in registered:
        try:
            parsed[key.key_id] = load_public_key(key.public_key)
        except KeyFormatError:
            log.warning("node key %s of chain %s is not a readable public key; ignored", key.key_id, key.chain_id)
    honoured: set[str] = set()
    grew = True
    while grew:  # pins signed by pinned keys: a fixed point over at most len(registered) rounds
        grew = False
        signers = TrustedKeys(local)
        for key_id in honoured:
            signers.add(parsed[key_id])
        for key in registered:
            if key.key_id in parsed and key.key_id not in honoured and key.status == PINNED:
                if _pin_verifies(key, signers):
                    honoured.add(key.key_id)
                    grew = True
    for key in registered:
        if key.key_id not in parsed:
            continue
        revoked = ""
        if key.status == REVOKED:
            revoked = f"by {key.revoked_by} at {stamp(key.revoked_ms)}"
        pinned_before = key.pinned_by is not None and key.key_id in honoured
        standing = PINNED if pinned_before else SELF_REGISTERED
        trust.add_standing(
            parsed[key.key_id],
            KeyStanding(key.key_id, standing, key.chain_id, key.revoked_height, key.revoked_head, revoked),
        )
    return trust


def offline_trust(pinned: list[Any], carried: list[Any]) -> KeyTrust:
    """An export file's trust: the keys given with --pubkey (pinned), then the keys the file carries (`carried`,
    each for its own chain). Carried keys let the verifier tell a chain signed by an unknown key from a rewritten
    one; they are reported as "carried, not pinned", never as trusted."""
    trust = KeyTrust()
    for public in pinned:
        trust.add_standing(public, KeyStanding(signer_key_id(public), LOCAL))
    for entry in carried:
        if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
            continue
        try:
            public = load_public_key(entry["public_key"])
        except KeyFormatError:
            continue
        chain_id = entry.get("chain_id")
        trust.add_standing(
            public, KeyStanding(signer_key_id(public), CARRIED, str(chain_id) if chain_id is not None else None)
        )
    return trust
