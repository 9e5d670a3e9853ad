"""The audit hash chain: canonical bytes of a record, its hash over the previous one, and verification.

record_hash = H(prev_hash ‖ canonical bytes), where H is the hash of the record's own suite (SHA-256 or SM3),
so records of both suites chain together. Sealed payloads enter the canonical bytes by their digest, so
destroying a data key (crypto-shredding) never breaks verification, while any change to a ciphertext does.

Verification walks a chain in height order and stops at the first fault, naming its height and kind:
`changed` (a column no longer matches the record's hash), `missing` (a height is gone), `reordered` (a record
sits at another record's height), `inserted` (a record that was never written by the chain), `truncated` (the
chain ends before a signed checkpoint) and `rehashed` (the chain was recomputed by someone without the signing
key: a checkpoint does not verify, or a signed head no longer matches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from security.checkpoints import Checkpoint, TrustedKeys
from security.crypto import SuiteUnavailable, get_suite

GENESIS_HASH = "0" * 64
HASH_FIELD = "record_hash"
PREV_FIELD = "prev_hash"
# Columns added after the first release: left out of the canonical bytes while empty, so records written
# before they existed still verify, and filling one in later still changes the hash.
OPTIONAL_FIELDS = ("target_id", "reason", "reason_category", "reason_ref")

# Finds one stored row of the chain by a column's value ("record_hash" or "prev_hash"); used only to explain a fault.
Finder = Callable[[str, str], Mapping[str, Any] | None]


class _RecordHasher:
    """Hashes records of one suite. `hash_row` is the hot loop of verification and of the writer: no copies."""

    def __init__(self, suite_name: str) -> None:
        suite = get_suite(suite_name)
        new_hash = suite.new_hash
        prefix = suite.hash_name + ":"

        def payload_digest(value: Any) -> str:
            if type(value) is bytes:
                return prefix + new_hash(value).hexdigest()
            if isinstance(value, bytes | bytearray | memoryview):
                return prefix + new_hash(bytes(value)).hexdigest()
            raise TypeError(f"audit records hold no {type(value).__name__} values")

        self._default = payload_digest
        self._new_hash = new_hash
        # For a reader that builds the canonical dict itself (gateway/audit/scan.py): the same two functions.
        self.payload_digest = payload_digest
        self.payload_prefix = prefix
        self.new_hash = new_hash

    def canonical(self, record: Mapping[str, Any]) -> bytes:
        body = {
            name: value
            for name, value in record.items()
            if name != HASH_FIELD and not (value is None and name in OPTIONAL_FIELDS)
        }
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=self._default)

    def hash(self, prev_hash: str, record: Mapping[str, Any]) -> str:
        return self._new_hash(bytes.fromhex(prev_hash) + self.canonical(record)).hexdigest()

    def hash_row(self, prev_hash: str, row: dict[str, Any], presorted: bool = False) -> str:
        """Like `hash`, for a row that holds no empty optional field (see `drop_empty_optional`).

        The row is borrowed: its record_hash is taken out while the rest is serialized, then put back.
        `presorted` rows (keys already in sorted order, as the database reader builds them) skip the sort.
        """
        own = row.pop(HASH_FIELD, _ABSENT)
        try:
            data = orjson.dumps(row, option=0 if presorted else orjson.OPT_SORT_KEYS, default=self._default)
        finally:
            if own is not _ABSENT:
                row[HASH_FIELD] = own
        return self._new_hash(bytes.fromhex(prev_hash) + data).hexdigest()


_ABSENT = object()
_HASHERS: dict[str, _RecordHasher] = {}


def _hasher(suite_name: str) -> _RecordHasher:
    hasher = _HASHERS.get(suite_name)
    if hasher is None:
        hasher = _HASHERS[suite_name] = _RecordHasher(suite_name)
    return hasher


def hasher_for(suite_name: str) -> _RecordHasher:
    """The record hasher of a suite (raises SuiteUnavailable for an unknown one)."""
    return _hasher(suite_name)


def drop_empty_optional(row: dict[str, Any]) -> dict[str, Any]:
    """Remove optional fields that are None, in place: the form `hash_row` expects."""
    for name in OPTIONAL_FIELDS:
        if name in row and row[name] is None:
            del row[name]
    return row


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """Sorted-key compact JSON of every field but the record's own hash: the same bytes on every node and database."""
    return _hasher(str(record.get("suite", "standard"))).canonical(record)


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """H(prev_hash ‖ canonical bytes) under the record's suite; raises SuiteUnavailable for an unknown suite."""
    return _hasher(str(record.get("suite", "standard"))).hash(prev_hash, record)


@dataclass(frozen=True)
class ChainFault:
    """The first place a chain does not verify: its height and what is wrong there."""

    chain_id: str
    height: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"chain {self.chain_id}: height {self.height} is {self.kind}: {self.detail}"


@dataclass(frozen=True)
class ChainReport:
    chain_id: str
    records: int
    head_hash: str
    fault: ChainFault | None
    head_height: int = 0
    start_height: int = 1
    sealed_height: int = 0
    signatures_checked: bool = False
    archives: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.fault is None

    @property
    def unsealed(self) -> int:
        """Verified records above the last checkpoint that verifies: intact so far, but not yet signed."""
        return max(0, self.head_height - self.sealed_height)


class _Walk:
    """State of one verification; `classify` explains a failure using the rows around it."""

    def __init__(self, chain_id: str, start_height: int, find: Finder | None) -> None:
        self.chain_id = chain_id
        self.start_height = start_height
        self.find = find

    def fault(self, height: int, kind: str, detail: str) -> ChainFault:
        return ChainFault(self.chain_id, max(height, self.start_height), kind, detail)

    def hash_ok_at(self, row: Mapping[str, Any], height: int) -> bool:
        """Does the row verify by its own content if it stood at `height`?"""
        moved = dict(row)
        moved["height"] = height
        try:
            return _hasher(str(moved.get("suite"))).hash(str(moved[PREV_FIELD]), moved) == moved[HASH_FIELD]
        except (SuiteUnavailable, ValueError, TypeError, KeyError):
            return False

    def lookup(self, column: str, value: str) -> Mapping[str, Any] | None:
        return self.find(column, value) if self.find is not None else None

    def classify(
        self, row: Mapping[str, Any], following: Mapping[str, Any] | None, expected: int, prev: str
    ) -> ChainFault:
        height = int(row["height"])
        if height < expected:
            return self.fault(height, "inserted", f"a second record claims height {height}")
        if height > expected:
            moved = self.lookup(PREV_FIELD, prev)
            if moved is not None and moved.get("chain_id") != self.chain_id:
                return self.fault(
                    expected,
                    "changed",
                    f"the record that follows height {expected - 1} now claims chain {moved.get('chain_id')!r}",
                )
            if moved is not None and int(moved["height"]) == expected:
                return self.fault(expected, "reordered", f"the record of height {expected} is stored out of order")
            if moved is not None:
                return self.fault(
                    expected,
                    "changed",
                    f"the record that follows height {expected - 1} now claims height {moved['height']}",
                )
            gap = f"height {expected} is" if height == expected + 1 else f"heights {expected}–{height - 1} are"
            return self.fault(expected, "missing", f"{gap} absent: the record was deleted")
        # The row stands at the expected height but does not verify there.
        target = self.lookup(HASH_FIELD, str(row[PREV_FIELD]))
        linked_after = 0 if row[PREV_FIELD] == GENESIS_HASH else (int(target["height"]) if target else None)
        candidates = [h for h in (None if linked_after is None else linked_after + 1, expected + 1, expected - 1) if h]
        for candidate in candidates:
            if candidate != expected and self.hash_ok_at(row, candidate):
                if candidate > expected:
                    return self.fault(
                        expected,
                        "reordered",
                        f"the record stored at height {expected} was written as height {candidate}",
                    )
                return self.fault(
                    candidate,
                    "inserted",
                    f"the record written as height {candidate} now stands at {expected}:"
                    " records were inserted before it",
                )
        if following is not None and following[PREV_FIELD] == prev and self.hash_ok_at(following, expected):
            return self.fault(
                expected, "inserted", "this record was never part of the chain; the next one links past it"
            )
        if self.hash_ok_at(row, expected):
            # Consistent in itself, but it links to something other than the record before it.
            if linked_after is None:
                return self.fault(
                    expected - 1,
                    "changed",
                    f"record {expected - 1} was changed and its hash recomputed: record {expected} still links"
                    " to its original hash",
                )
            if linked_after > expected - 1:
                return self.fault(expected, "reordered", f"it links to the record of height {linked_after}")
            return self.fault(
                linked_after + 1, "inserted", f"records between heights {linked_after} and {expected} were inserted"
            )
        if row[PREV_FIELD] != prev:
            return self.fault(expected, "changed", "its prev_hash does not name the record before it")
        return self.fault(expected, "changed", "its content does not match its record_hash")


@dataclass(frozen=True)
class Failure:
    """A row that did not verify, with what is needed to explain it: the row after it and the expected link."""

    row: dict[str, Any]
    expected: int
    prev: str
    following: dict[str, Any] | None = None

    @property
    def lookups(self) -> list[tuple[str, str]]:
        """The (column, value) pairs `classify` may look up; a database verifier fetches them up front."""
        return [(PREV_FIELD, self.prev), (HASH_FIELD, str(self.row.get(PREV_FIELD)))]


class ChainVerifier:
    """Verifies one chain incrementally: `feed` rows in height order (a page at a time), then `finish`.

    `checkpoints` are checked at their heights: with `trusted` keys each must carry a valid signature; without,
    only their head hashes are compared. `sealed_height` is the height already covered by a trusted signature
    before this walk starts (an archive's last checkpoint). `presorted` promises rows whose keys are in sorted
    order (the database reader builds them so), which saves sorting each one.
    """

    def __init__(
        self,
        chain_id: str,
        *,
        start_height: int = 1,
        start_hash: str = GENESIS_HASH,
        checkpoints: Iterable[Checkpoint] = (),
        trusted: TrustedKeys | None = None,
        sealed_height: int | None = None,
        presorted: bool = False,
    ) -> None:
        self.chain_id = chain_id
        self.presorted = presorted
        self.start_height = start_height
        self.trusted = trusted
        self._by_height: dict[int, list[Checkpoint]] = {}
        for checkpoint in checkpoints:
            if checkpoint.chain_id == chain_id and checkpoint.height >= start_height:
                self._by_height.setdefault(checkpoint.height, []).append(checkpoint)
        self.sealed = start_height - 1 if sealed_height is None else sealed_height
        self.expected = start_height
        self.prev = start_hash
        self.count = 0
        self.failure: Failure | None = None
        self.fault: ChainFault | None = None
        self._walk = _Walk(chain_id, start_height, None)

    @property
    def wants_rows(self) -> bool:
        """False once the verdict no longer depends on further rows."""
        if self.fault is not None:
            return False
        return self.failure is None or self.failure.following is None

    def feed(self, rows: Iterable[dict[str, Any]]) -> bool:
        """Verify more rows; returns `wants_rows`. Rows are borrowed, briefly changed and restored while hashed."""
        iterator = iter(rows)
        if self.failure is not None:
            if self.failure.following is None:
                following = next(iterator, None)
                if following is not None:
                    self.failure = Failure(self.failure.row, self.failure.expected, self.failure.prev, following)
            return self.wants_rows
        if self.fault is not None:
            return False
        expected, prev, by_height, hashers = self.expected, self.prev, self._by_height, _HASHERS
        presorted = self.presorted
        last_suite: Any = _ABSENT
        last_hasher: _RecordHasher | None = None
        try:
            for row in iterator:
                if (
                    row.get("target_id", 0) is None
                    or row.get("reason", 0) is None
                    or row.get("reason_category", 0) is None
                    or row.get("reason_ref", 0) is None
                ):
                    drop_empty_optional(row)
                if row["height"] == expected and row[PREV_FIELD] == prev:
                    suite = row.get("suite")
                    if suite == last_suite:
                        hasher = last_hasher
                    else:
                        hasher = hashers.get(suite) if isinstance(suite, str) else None
                        if hasher is None:
                            try:
                                hasher = _hasher(str(suite))
                            except SuiteUnavailable:
                                hasher = None
                        last_suite, last_hasher = suite, hasher
                    if hasher is not None and hasher.hash_row(prev, row, presorted) == row[HASH_FIELD]:
                        prev = row[HASH_FIELD]
                        self.count += 1
                        if expected in by_height:
                            self.fault = self._check_checkpoints(by_height[expected], expected, prev)
                            if self.fault is not None:
                                expected += 1
                                return False
                            self.sealed = expected
                        expected += 1
                        continue
                self.failure = Failure(row, expected, prev, next(iterator, None))
                return self.wants_rows
            return True
        finally:
            self.expected, self.prev = expected, prev

    def finish(self, find: Finder | None = None) -> ChainReport:
        """The verdict. `find` looks a row up elsewhere in the chain, to tell a reordered or inserted record."""
        if self.fault is None and self.failure is not None:
            failure = self.failure
            self._walk.find = find
            self.fault = self._walk.classify(failure.row, failure.following, failure.expected, failure.prev)
        if self.fault is None:
            self.fault = self._truncation()
        return ChainReport(
            self.chain_id,
            self.count,
            self.prev,
            self.fault,
            head_height=self.expected - 1,
            start_height=self.start_height,
            sealed_height=self.sealed,
            signatures_checked=self.trusted is not None,
        )

    def _truncation(self) -> ChainFault | None:
        """The chain ended: a trustworthy checkpoint above its head means records were cut off."""
        for height in sorted(h for h in self._by_height if h >= self.expected):
            for checkpoint in self._by_height[height]:
                why = self.trusted.check(checkpoint) if self.trusted is not None else None
                if why is not None:
                    return self._walk.fault(
                        self.sealed + 1, "rehashed", f"a checkpoint at height {height} cannot be trusted: {why}"
                    )
            return self._walk.fault(
                self.expected,
                "truncated",
                f"a signed checkpoint names height {height}, but the chain ends at height {self.expected - 1}",
            )
        return None

    def _check_checkpoints(self, checkpoints: list[Checkpoint], height: int, head: str) -> ChainFault | None:
        """The checkpoints at `height` must be trustworthy and name the head just computed."""
        for checkpoint in checkpoints:
            why = self.trusted.check(checkpoint) if self.trusted is not None else None
            if why is not None:
                return self._walk.fault(
                    self.sealed + 1,
                    "rehashed",
                    f"the checkpoint at height {height} cannot be trusted ({why}); heights {self.sealed + 1}–{height}"
                    " are covered by no valid signature",
                )
            if checkpoint.head_hash != head:
                return self._walk.fault(
                    self.sealed + 1,
                    "rehashed",
                    f"the signed checkpoint at height {height} names head {checkpoint.head_hash[:16]}…, the chain"
                    f" now computes {head[:16]}…: records between heights {self.sealed + 1} and {height} were"
                    " rewritten",
                )
        return None


def verify_chain(
    chain_id: str,
    records: Iterable[dict[str, Any]],
    *,
    start_height: int = 1,
    start_hash: str = GENESIS_HASH,
    checkpoints: Iterable[Checkpoint] = (),
    trusted: TrustedKeys | None = None,
    find: Finder | None = None,
    sealed_height: int | None = None,
) -> ChainReport:
    """Walk `records` (in height order, from `start_height` after `start_hash`) and stop at the first fault."""
    verifier = ChainVerifier(
        chain_id,
        start_height=start_height,
        start_hash=start_hash,
        checkpoints=checkpoints,
        trusted=trusted,
        sealed_height=sealed_height,
    )
    verifier.feed(records)
    return verifier.finish(find)
