"""Callers, their keys and their grants, read from the database into a snapshot no older than ~1 s.

Every request needs them; reading them per request would cost a round trip each. A snapshot that is
refreshed when older than `ttl` keeps revocation visible on every node within that time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.models import Caller, CallerKey, Grant
from security.keys import KeyFormatError, load_public_key


@dataclass(frozen=True)
class CallerInfo:
    caller_id: str
    name: str
    department: str
    roles: frozenset[str]


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    caller: CallerInfo
    public_key: Ed25519PublicKey | None
    status: str


@dataclass(frozen=True)
class GrantInfo:
    grant_id: str
    caller_id: str
    service: str
    operation: str
    purpose: str
    fields: tuple[str, ...]
    valid_from: datetime
    valid_to: datetime
    department: str = ""
    daily_quota: int | None = None
    rate_limit: str | None = None
    sharing_request_id: str | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.valid_from <= now < self.valid_to

    @property
    def quota_scope(self) -> str:
        """What the quota and rate limit count: all grants of one sharing request together, else this grant."""
        return self.sharing_request_id or self.grant_id


@dataclass(frozen=True)
class _Snapshot:
    loaded: float
    keys: dict[str, KeyInfo]
    grants: dict[tuple[str, str, str], tuple[GrantInfo, ...]]


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the gateway stores is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Directory:
    def __init__(self, sessions: async_sessionmaker, ttl: float = 1.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._snapshot: _Snapshot | None = None
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._snapshot = None

    async def key(self, key_id: str) -> KeyInfo | None:
        return (await self._current()).keys.get(key_id)

    async def grants_for(self, caller_id: str, service: str, operation: str) -> tuple[GrantInfo, ...]:
        return (await self._current()).grants.get((caller_id, service, operation), ())

    async def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - snapshot.loaded < self._ttl:
            return snapshot
        async with self._lock:
            snapshot = self._snapshot
            if snapshot is None or time.monotonic() - snapshot.loaded >= self._ttl:
                snapshot = await self._load()
                self._snapshot = snapshot
        return snapshot

    async def _load(self) -> _Snapshot:
        started = time.monotonic()
        async with self._sessions() as session:
            callers = {
                row.caller_id: CallerInfo(row.caller_id, row.name, row.department, frozenset(row.roles))
                for row in (await session.scalars(select(Caller))).all()
            }
            keys: dict[str, KeyInfo] = {}
            for row in (await session.scalars(select(CallerKey))).all():
                caller = callers.get(row.caller_id)
                if caller is None:
                    continue
                try:
                    public_key = load_public_key(row.public_key) if row.status == "active" else None
                except KeyFormatError:
                    public_key = None
                keys[row.key_id] = KeyInfo(row.key_id, caller, public_key, row.status)
            now = datetime.now(UTC)
            grants: dict[tuple[str, str, str], list[GrantInfo]] = {}
            query = select(Grant).where(Grant.revoked_at.is_(None), Grant.valid_to > now)
            for row in (await session.scalars(query)).all():
                info = GrantInfo(
                    row.grant_id,
                    row.caller_id,
                    row.service,
                    row.operation,
                    row.purpose,
                    tuple(row.fields),
                    as_utc(row.valid_from),
                    as_utc(row.valid_to),
                    row.department,
                    row.daily_quota,
                    row.rate_limit,
                    row.sharing_request_id,
                )
                grants.setdefault((row.caller_id, row.service, row.operation), []).append(info)
        return _Snapshot(started, keys, {key: tuple(value) for key, value in grants.items()})
