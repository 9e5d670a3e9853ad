"""The audit hash chain: canonical bytes of a record, its hash over the previous one, and verification."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS_HASH = "0" * 64
HASH_FIELD = "record_hash"
PREV_FIELD = "prev_hash"


def _bytes_as_digest(value: Any) -> str:
    # Sealed payloads enter the chain by their hash, so destroying a data key (crypto-shredding)
    # never breaks verification, while any change to the ciphertext still does.
    if isinstance(value, bytes | bytearray | memoryview):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    raise TypeError(f"audit records hold no {type(value).__name__} values")


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """Sorted-key compact JSON of every field but the record's own hash: the same bytes on every node and database."""
    body = {key: value for key, value in record.items() if key != HASH_FIELD}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=_bytes_as_digest)


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_bytes(record)).hexdigest()


@dataclass(frozen=True)
class ChainFault:
    """The first place a chain does not verify: its height and what is wrong there."""

    chain_id: str
    height: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"chain {self.chain_id}: record at height {self.height} is {self.kind}: {self.detail}"


@dataclass(frozen=True)
class ChainReport:
    chain_id: str
    records: int
    head_hash: str
    fault: ChainFault | None

    @property
    def ok(self) -> bool:
        return self.fault is None


def verify_chain(chain_id: str, records: Iterable[Mapping[str, Any]]) -> ChainReport:
    """Walk records in height order from genesis; stop at the first fault.

    Kinds: `changed` (content no longer matches its hash), `relinked` (its prev_hash does not name the
    record before it), `missing` (a height is skipped), `reordered`/`inserted` (a height repeats or goes back).
    """
    expected_height = 1
    prev = GENESIS_HASH
    count = 0
    for record in records:
        height = int(record["height"])
        if height != expected_height:
            kind = "missing" if height > expected_height else "reordered"
            if height == expected_height - 1:
                kind = "inserted"
            fault = ChainFault(chain_id, expected_height, kind, f"expected height {expected_height}, found {height}")
            return ChainReport(chain_id, count, prev, fault)
        if record[PREV_FIELD] != prev:
            fault = ChainFault(chain_id, height, "relinked", "prev_hash does not match the previous record's hash")
            return ChainReport(chain_id, count, prev, fault)
        computed = record_hash(prev, record)
        if computed != record[HASH_FIELD]:
            fault = ChainFault(chain_id, height, "changed", "record content does not match its record_hash")
            return ChainReport(chain_id, count, prev, fault)
        prev = computed
        expected_height += 1
        count += 1
    return ChainReport(chain_id, count, prev, None)
