"""Envelope encryption of audit payloads: a master key wraps data keys, one per period, stored for every node to see.

The master key never leaves the process that loads it (from MSJX_MASTER_KEY, a mounted secret file, or a
file generated under the data directory). Data keys are stored wrapped by it, so a database dump alone
opens nothing. A rotation is a new row; every node re-reads the rows within a second and seals with the
newest key of its suite. Destroying a data key removes its only wrapped copy: the payloads it sealed can no
longer be opened (crypto-shredding), while the chain, which covers ciphertext digests, still verifies.
The index key (HMAC for subject hashes and body digests) is shared the same way, so every node hashes a
USCC to the same value and officers can search across nodes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from schemas.errors import MsjxError
from security.crypto import DataKey, DecryptionError, forget_cached_keys, get_suite
from security.keys import write_secret_file

log = logging.getLogger("msjx.keyring")
MASTER_KEY_SIZE = 32
INDEX_KEY_ID = "ix-1"
INDEX_KEY_SIZE = 32
DAY_MS = 86_400_000


class KeyRingError(MsjxError):
    """The key ring cannot do what was asked; the message names keys by id only, never by content."""


class PayloadShredded(DecryptionError):
    """The data key that sealed this payload was destroyed on purpose: the payload is gone for good."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class MasterKey:
    secret: bytes
    source: str  # where it came from, for `keys list`: "env MSJX_MASTER_KEY", "file …"

    @property
    def key_id(self) -> str:
        return "mk-" + hashlib.sha256(b"msjx-master-key-id/1" + self.secret).hexdigest()[:16]

    def kek(self, suite: str) -> bytes:
        """The key-encryption key for one suite, derived with that suite's own HKDF (SM3 for `sm`)."""
        chosen = get_suite(suite)
        return chosen.derive(self.secret, b"msjx-gateway/kek/" + suite.encode(), chosen.key_size)

    def __repr__(self) -> str:
        return f"MasterKey({self.key_id}, {self.source})"


def parse_master_key(data: str | bytes, where: str) -> bytes:
    """32 bytes given as base64 (or, in a file, raw); the message names the source, never the content."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == MASTER_KEY_SIZE:
        return decoded
    if isinstance(data, bytes) and len(data) == MASTER_KEY_SIZE:
        return data
    raise KeyRingError(f"{where} must hold a {MASTER_KEY_SIZE}-byte key in base64")


def load_master_key(*, env_value: str | None, secret_file: Path | None, default_path: Path) -> MasterKey:
    """The master key from the environment, else a mounted secret file, else `default_path` (made on first use)."""
    if env_value:
        return MasterKey(parse_master_key(env_value, "MSJX_MASTER_KEY"), "env MSJX_MASTER_KEY")
    if secret_file is not None:
        try:
            data = secret_file.read_bytes()
        except OSError as exc:
            raise KeyRingError(f"MSJX_MASTER_KEY_FILE: cannot read {secret_file}: {exc.strerror}") from None
        return MasterKey(parse_master_key(data, f"MSJX_MASTER_KEY_FILE {secret_file}"), f"file {secret_file}")
    if default_path.exists():
        mode = default_path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("master key file %s has mode %o; it should be 0600", default_path, mode)
        return MasterKey(parse_master_key(default_path.read_bytes(), str(default_path)), f"file {default_path}")
    secret = secrets.token_bytes(MASTER_KEY_SIZE)
    write_secret_file(default_path, base64.b64encode(secret) + b"\n")
    log.warning(
        "generated a new master key at %s (mode 0600); every node of this gateway must use the same one", default_path
    )
    return MasterKey(secret, f"file {default_path} (generated)")


@dataclass(frozen=True)
class StoredKey:
    """A row of the key table: a data key (`kind` "data") or the index key (`kind` "index"), wrapped."""

    key_id: str
    kind: str
    suite: str
    created_ms: int
    master_key_id: str
    wrapped: bytes | None
    destroyed_ms: int | None = None

    @property
    def destroyed(self) -> bool:
        return self.destroyed_ms is not None


class KeyStore(Protocol):
    """Where wrapped keys live; the gateway's is a database table every node reads."""

    async def load(self) -> list[StoredKey]: ...

    async def insert(self, key: StoredKey) -> bool:
        """Add a key; False (and no change) if its key id exists already."""
        ...

    async def destroy(self, key_ids: list[str], when_ms: int) -> None: ...


def _wrap_aad(key_id: str, kind: str, suite: str) -> bytes:
    return f"msjx-key-wrap/1|{kind}|{key_id}|{suite}".encode()


class KeyRing:
    """Unwrapped keys of this process, refreshed from the store; seals with `current()`, opens with `get()`."""

    def __init__(
        self,
        master: MasterKey,
        store: KeyStore,
        *,
        suite: str = "standard",
        period_days: int = 30,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        get_suite(suite)  # fails early, with its reason, if the suite cannot run here
        self.master = master
        self.suite = suite
        self._store = store
        self._period_ms = period_days * DAY_MS
        self._clock = clock
        self._rows: dict[str, StoredKey] = {}
        self._secrets: dict[str, bytes] = {}
        self._current: dict[str, DataKey] = {}
        self._index_key: bytes | None = None
        self.refreshed_ms = 0

    # --- life cycle -------------------------------------------------------------------------------------------

    async def open(self, imports: Iterable[StoredKey] = ()) -> KeyRing:
        """Load the keys, import legacy ones, and make sure the index key and a data key of our suite exist."""
        await self.refresh()
        for key in imports:
            if key.key_id not in self._rows:
                await self._store.insert(key)
        if not any(row.kind == "index" for row in self._rows.values()):
            await self._store.insert(self._wrap(INDEX_KEY_ID, "index", self.suite, secrets.token_bytes(INDEX_KEY_SIZE)))
        await self.refresh()
        await self.rotate_if_due()
        return self

    async def refresh(self) -> None:
        """Re-read the store: pick up rotations by any node and drop keys destroyed anywhere."""
        rows = {row.key_id: row for row in await self._store.load()}
        dropped = [key_id for key_id in self._secrets if rows.get(key_id) is None or rows[key_id].destroyed]
        for key_id in dropped:
            del self._secrets[key_id]
        if dropped:
            forget_cached_keys()
        self._rows = rows
        for row in rows.values():
            if row.kind == "index" and not row.destroyed:
                self._index_key = self._secret(row)
        current: dict[str, DataKey] = {}
        for suite, row in self._newest_data_keys().items():
            current[suite] = DataKey(row.key_id, self._secret(row), suite)
        self._current = current
        self.refreshed_ms = self._clock()

    # --- use ------------------------------------------------------------------------------------------------

    def current(self, suite: str | None = None) -> DataKey:
        """The data key new payloads of `suite` are sealed with."""
        suite = suite or self.suite
        key = self._current.get(suite)
        if key is None:
            raise KeyRingError(f"no live data key for suite {suite}; run `msjx-gateway keys rotate`")
        return key

    @property
    def index_key(self) -> bytes:
        if self._index_key is None:
            raise KeyRingError("the index key is missing or destroyed; subject hashes cannot be computed")
        return self._index_key

    async def get(self, key_id: str, *, fresh: bool = False) -> DataKey:
        """The data key `key_id`, re-reading the store on a miss (or first, if `fresh`: a destruction anywhere is then
        seen at once); PayloadShredded if it was destroyed."""
        row = self._rows.get(key_id)
        if fresh or row is None or (key_id not in self._secrets and not row.destroyed):
            await self.refresh()
            row = self._rows.get(key_id)
        if row is None or row.kind != "data":
            raise KeyRingError(f"no data key {key_id} in the key ring")
        if row.destroyed:
            destroyed = datetime.fromtimestamp((row.destroyed_ms or 0) / 1000, UTC).isoformat(timespec="seconds")
            raise PayloadShredded(f"data key {key_id} was destroyed at {destroyed}")
        return DataKey(key_id, self._secret(row), row.suite)

    def rows(self) -> list[StoredKey]:
        return sorted(self._rows.values(), key=lambda row: (row.kind, row.created_ms, row.key_id))

    # --- rotation and destruction -----------------------------------------------------------------------------

    async def rotate(self, suites: Iterable[str] | None = None) -> list[StoredKey]:
        """Start a new data key for each suite in use (and ours); every node switches within its refresh interval."""
        wanted = set(suites) if suites is not None else {self.suite, *self._newest_data_keys()}
        stamp = datetime.fromtimestamp(self._clock() / 1000, UTC).strftime("%Y%m%dT%H%M%S")
        made = []
        for suite in sorted(wanted):
            key = self._wrap(f"dk-{suite}-{stamp}-{secrets.token_hex(2)}", "data", suite, self._new_secret(suite))
            if await self._store.insert(key):
                made.append(key)
        await self.refresh()
        return made

    async def rotate_if_due(self) -> StoredKey | None:
        """Start this period's data key for our suite when the newest is from an earlier period (or none exists).

        The key id is the period's, so nodes that notice at the same moment write the same row once.
        """
        now = self._clock()
        period_start = now - now % self._period_ms
        newest = self._newest_data_keys().get(self.suite)
        if newest is not None and newest.created_ms >= period_start:
            return None
        day = datetime.fromtimestamp(period_start / 1000, UTC).strftime("%Y%m%d")
        key = self._wrap(f"dk-{self.suite}-{day}", "data", self.suite, self._new_secret(self.suite))
        key = replace(key, created_ms=max(now, newest.created_ms + 1) if newest else now)
        inserted = await self._store.insert(key)
        await self.refresh()
        return key if inserted else None

    def destroyable(self, before_ms: int) -> list[StoredKey]:
        """Data keys that stopped sealing before `before_ms` (a newer key of their suite existed), still alive.

        The current key of a suite is never among them, so new payloads always have a key.
        """
        by_suite: dict[str, list[StoredKey]] = {}
        for row in self._rows.values():
            if row.kind == "data":
                by_suite.setdefault(row.suite, []).append(row)
        chosen = []
        for rows in by_suite.values():
            rows.sort(key=lambda row: (row.created_ms, row.key_id))
            for older, newer in itertools.pairwise(rows):
                if not older.destroyed and newer.created_ms <= before_ms:
                    chosen.append(older)
        return chosen

    async def destroy_before(self, before_ms: int) -> list[StoredKey]:
        await self.refresh()
        chosen = self.destroyable(before_ms)
        if chosen:
            await self._store.destroy([row.key_id for row in chosen], self._clock())
            await self.refresh()
        return chosen

    # --- internals --------------------------------------------------------------------------------------------

    def _newest_data_keys(self) -> dict[str, StoredKey]:
        newest: dict[str, StoredKey] = {}
        for row in self._rows.values():
            if row.kind != "data" or row.destroyed:
                continue
            best = newest.get(row.suite)
            if best is None or (row.created_ms, row.key_id) > (best.created_ms, best.key_id):
                newest[row.suite] = row
        return newest

    def _new_secret(self, suite: str) -> bytes:
        return secrets.token_bytes(get_suite(suite).key_size)

    def _wrap(self, key_id: str, kind: str, suite: str, secret: bytes) -> StoredKey:
        wrapped = get_suite(suite).seal(self.master.kek(suite), secret, _wrap_aad(key_id, kind, suite))
        return StoredKey(key_id, kind, suite, self._clock(), self.master.key_id, wrapped)

    def wrap_existing(self, key_id: str, kind: str, suite: str, secret: bytes, created_ms: int) -> StoredKey:
        """Wrap a key that exists outside the ring (a legacy key file) for import by `open`."""
        return replace(self._wrap(key_id, kind, suite, secret), created_ms=created_ms)

    def _secret(self, row: StoredKey) -> bytes:
        cached = self._secrets.get(row.key_id)
        if cached is not None:
            return cached
        if row.wrapped is None:
            raise KeyRingError(f"key {row.key_id} has no wrapped copy")
        if row.master_key_id != self.master.key_id:
            raise KeyRingError(
                f"key {row.key_id} is wrapped by master key {row.master_key_id}, but this node holds"
                f" {self.master.key_id}: every node must be given the same MSJX_MASTER_KEY"
            )
        try:
            secret = get_suite(row.suite).open(
                self.master.kek(row.suite), row.wrapped, _wrap_aad(row.key_id, row.kind, row.suite)
            )
        except DecryptionError:
            raise KeyRingError(f"key {row.key_id} does not unwrap: its stored copy was changed") from None
        self._secrets[row.key_id] = secret
        return secret


def read_legacy_key(path: Path, size: int) -> bytes | None:
    """A raw key file of the first release (keys/audit-data-dk-1.key, keys/subject-hmac.key), if present and sound."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if len(data) == size else None


def remove_file(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
