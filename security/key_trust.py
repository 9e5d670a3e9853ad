"""Which checkpoint keys a verifier accepts, on what standing, for which chain; and which of them a verification used.

Standings, strongest first: `local` (a key the verifier holds itself: its own, a file in keys/trusted/, --pubkey),
`pinned` (an operator pinned the registered key, and the pin is signed by a key the verifier trusts),
`self-registered` (the node wrote its key into the database; anyone who can write the database could have, so it
proves less), `carried` (a key that travels inside an export file, trusted by nobody until pinned with --pubkey).
A registered key vouches only for the chain it was registered for. A revoked key's checkpoints above the height
it had signed when it was revoked fail; at that height the checkpoint must name the head recorded then.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from security.checkpoints import Checkpoint, TrustedKeys

LOCAL, PINNED, SELF_REGISTERED, CARRIED = "local", "pinned", "self-registered", "carried"
_RANK = {LOCAL: 0, PINNED: 1, SELF_REGISTERED: 2, CARRIED: 3}
PIN_CHAIN_PREFIX = "pin/"


def cli_chain_of(node_chain: str) -> str:
    """The chain a node's command line writes its operators' changes on, signed with that node's own key."""
    return f"cli-{node_chain}"[:64]


def signs_for(registered_chain: str, chain_id: str) -> bool:
    """Whether a key registered for `registered_chain` may sign checkpoints of `chain_id`: its own chain, and its
    node's command-line chain."""
    return chain_id == registered_chain or chain_id == cli_chain_of(registered_chain)


@dataclass(frozen=True)
class KeyStanding:
    key_id: str
    standing: str
    chain_id: str | None = None  # the chain a registered key may sign; None for a local key (any chain)
    revoked_height: int | None = None
    revoked_head: str | None = None
    revoked: str = ""  # who revoked it and when, as shown to the reader

    def describe(self) -> str:
        text = self.standing
        if self.revoked:
            text += f", revoked {self.revoked} (accepted through height {self.revoked_height or 0})"
        return text


def pin_digest(key_id: str, chain_id: str, algorithm: str, public_key: str, pinned_by: str) -> str:
    """SHA-256 of the pin statement: the pinned key, its chain and algorithm, and who pinned it."""
    statement = {
        "algorithm": algorithm,
        "chain_id": chain_id,
        "key_id": key_id,
        "pinned_by": pinned_by,
        "public_key": public_key,
    }
    return hashlib.sha256(orjson.dumps(statement, option=orjson.OPT_SORT_KEYS)).hexdigest()


def pin_checkpoint(key_id: str, digest: str, pinned_ms: int, signer: str, signature: str) -> Checkpoint:
    """A pin is signed as a checkpoint of the pseudo-chain `pin/<key id>` whose head is the pin statement's digest,
    so it uses the same signing code (Ed25519 or SM2) and cannot be mistaken for a real chain's checkpoint: chain
    ids (node ids) never hold a slash."""
    return Checkpoint(PIN_CHAIN_PREFIX + key_id, 0, digest, pinned_ms, signer, signature)


class KeyTrust(TrustedKeys):
    """Trusted keys with a standing each; `check` enforces chain and revocation limits and records what it used."""

    def __init__(self) -> None:
        super().__init__()
        self.standings: dict[str, KeyStanding] = {}
        self._used: dict[str, set[str]] = {}

    def add_standing(self, key: object, standing: KeyStanding) -> str:
        key_id = self.add(key)  # type: ignore[arg-type]
        known = self.standings.get(key_id)
        if known is not None and _RANK[known.standing] <= _RANK[standing.standing]:
            if standing.revoked and not known.revoked:  # a revocation binds a key whatever else trusts it
                self.standings[key_id] = KeyStanding(
                    key_id,
                    known.standing,
                    known.chain_id,
                    standing.revoked_height,
                    standing.revoked_head,
                    standing.revoked,
                )
            return key_id
        if known is not None and known.revoked and not standing.revoked:
            standing = KeyStanding(
                key_id, standing.standing, standing.chain_id, known.revoked_height, known.revoked_head, known.revoked
            )
        self.standings[key_id] = KeyStanding(
            key_id,
            standing.standing,
            standing.chain_id,
            standing.revoked_height,
            standing.revoked_head,
            standing.revoked,
        )
        return key_id

    def standing(self, key_id: str) -> KeyStanding | None:
        return self.standings.get(key_id)

    def check(self, checkpoint: Checkpoint) -> str | None:
        info = self.standings.get(checkpoint.key_id)
        if info is not None and info.chain_id is not None and not signs_for(info.chain_id, checkpoint.chain_id):
            return (
                f"it is signed by {checkpoint.key_id}, which is registered for chain {info.chain_id}, not for"
                f" {checkpoint.chain_id}"
            )
        if info is not None and info.revoked:
            limit = info.revoked_height or 0
            if checkpoint.height > limit:
                return (
                    f"it is signed by {checkpoint.key_id}, revoked {info.revoked}; its checkpoints above height"
                    f" {limit} are not accepted"
                )
            if checkpoint.height == limit and checkpoint.head_hash != info.revoked_head:
                return (
                    f"it is signed by the revoked key {checkpoint.key_id} and names another head than the one"
                    f" recorded at its revocation"
                )
        why = super().check(checkpoint)
        if why is None and not checkpoint.chain_id.startswith(PIN_CHAIN_PREFIX):
            self._used.setdefault(checkpoint.chain_id, set()).add(checkpoint.key_id)
        return why

    def used_by(self, chain_id: str) -> list[KeyStanding]:
        """The keys whose checkpoints of `chain_id` verified, strongest standing first."""
        found = [self.standings.get(key_id) or KeyStanding(key_id, LOCAL) for key_id in self._used.get(chain_id, ())]
        return sorted(found, key=lambda item: (_RANK[item.standing], item.key_id))
