"""Callers, their keys and their grants, read from the database into a snapshot no older than 1 s.

Every request needs them; reading them per request would cost a round trip each. A snapshot that is
refreshed when older than `ttl`, and never served once older than `REVOCATION_BOUND`, keeps revocation
visible on every node within 1 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.storage.health import Dependency, is_database_outage
from gateway.storage.models import Caller, CallerKey, Grant
from schemas.problems import ProblemCode
from security.keys import KeyFormatError, PublicKey, load_public_key

log = logging.getLogger("msjx.directory")
# A revocation committed at time T is in every snapshot whose load started after T (`loaded` is read before the
# first query). A snapshot older than `ttl` (grant_cache_seconds, 0.8 s by default) gets ONE reload task; while it
# runs, requests keep the old snapshot, but only while that is younger than ttl + STALE_GRACE (0.2 s), and never
# older than REVOCATION_BOUND (1.0 s): past that they wait for the reload. No node answers from a snapshot older
# than 1.0 s, so every node sees a revocation within 1 s, and a reload (~1 ms) is off the request path.
REVOCATION_BOUND = 1.0
STALE_GRACE = 0.2


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
    public_key: PublicKey | None  # Ed25519 or SM2; None when revoked
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
    # Approved through a sharing request and not yet delivered: its first successful call records delivery.
    undelivered: bool = False
    share_methods: tuple[str, ...] = ("api",)

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


class Directory:
    def __init__(
        self,
        sessions: async_sessionmaker,
        ttl: float = 0.8,
        health: Dependency | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._sessions = sessions
        # Wall time: which grants are valid now (the snapshot's age is monotonic time, not this).
        self.clock = clock
        self.health = health or Dependency("database", ProblemCode.DATABASE_UNAVAILABLE)
        self._ttl = ttl
        # A ttl of 0 asks for no caching at all: then no stale snapshot either.
        self._stale_limit = max(ttl, min(ttl + STALE_GRACE, REVOCATION_BOUND)) if ttl > 0 else 0.0
        self._snapshot: _Snapshot | None = None
        self._reload: asyncio.Task[_Snapshot] | None = None
        self._generation = 0

    def invalidate(self) -> None:
        """Drop the snapshot: the next caller waits for a fresh one (a reload in flight may predate the change)."""
        self._snapshot = None
        self._reload = None
        self._generation += 1

    async def key(self, key_id: str) -> KeyInfo | None:
        return (await self._current()).keys.get(key_id)

    async def grants_for(self, caller_id: str, service: str, operation: str) -> tuple[GrantInfo, ...]:
        return (await self._current()).grants.get((caller_id, service, operation), ())

    async def ended_grant(
        self, caller_id: str, service: str, operation: str, purpose: str, now: datetime
    ) -> tuple[ProblemCode, Grant] | None:
        """Why the caller has no grant it may use for this purpose: one it had, now suspended, revoked or expired.

        Read from the database, not the snapshot, and only on a refusal, so a granted call pays nothing for it.
        A suspended grant comes first (it may come back); else the one that ended last.
        """
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(Grant).where(
                        Grant.caller_id == caller_id,
                        Grant.service == service,
                        Grant.operation == operation,
                        Grant.purpose == purpose,
                    )
                )
            ).all()
        ended: list[tuple[int, datetime, str, Grant]] = []
        for row in rows:
            if row.revoked_at is not None:
                ended.append((0, row.revoked_at, ProblemCode.GRANT_REVOKED, row))
            elif row.valid_to <= now:
                ended.append((0, row.valid_to, ProblemCode.GRANT_EXPIRED, row))
            elif row.suspended_at is not None:
                ended.append((1, row.suspended_at, ProblemCode.GRANT_SUSPENDED, row))
        if not ended:
            return None
        _, _, code, row = max(ended, key=lambda entry: (entry[0], entry[1]))
        return code, row

    async def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        age = time.monotonic() - snapshot.loaded if snapshot is not None else 0.0
        if snapshot is not None and age < self._ttl:
            return snapshot
        loop = asyncio.get_running_loop()
        reload = self._reload
        if reload is None or reload.get_loop() is not loop:
            reload = self._reload = loop.create_task(self._refresh(self._generation), name="directory-reload")
            reload.add_done_callback(_log_failure)
        if snapshot is not None and age < self._stale_limit:
            return snapshot
        # Shielded: a caller that gives up (client gone, timeout) does not cancel the reload others wait for.
        try:
            return await asyncio.shield(reload)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            # Counted once, by the reload; every request waiting on it gets the 503.
            raise self.health.problem(
                "callers, keys and grants could not be read from the database, so the request was not checked;"
                " retry later"
            ) from None

    async def _refresh(self, generation: int) -> _Snapshot:
        try:
            try:
                snapshot = await self._load()
            except Exception as exc:
                if is_database_outage(exc):
                    self.health.failed(exc)
                raise
            self.health.succeeded()
            if generation == self._generation:  # not invalidated meanwhile
                self._snapshot = snapshot
            return snapshot
        finally:
            if self._reload is asyncio.current_task():
                self._reload = None

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
            now = self.clock.now()
            grants: dict[tuple[str, str, str], list[GrantInfo]] = {}
            # Only grants that may answer: a suspended one is refused like a revoked one, from the database.
            query = select(Grant).where(Grant.revoked_at.is_(None), Grant.suspended_at.is_(None), Grant.valid_to > now)
            for row in (await session.scalars(query)).all():
                info = GrantInfo(
                    row.grant_id,
                    row.caller_id,
                    row.service,
                    row.operation,
                    row.purpose,
                    tuple(row.fields),
                    row.valid_from,
                    row.valid_to,
                    row.department,
                    row.daily_quota,
                    row.rate_limit,
                    row.sharing_request_id,
                    row.delivery_due is not None and row.delivered_at is None,
                    tuple(row.share_methods or ("api",)),
                )
                grants.setdefault((row.caller_id, row.service, row.operation), []).append(info)
        return _Snapshot(started, keys, {key: tuple(value) for key, value in grants.items()})


def _log_failure(task: asyncio.Task[_Snapshot]) -> None:
    # Callers served the old snapshot never see the error; the next one past the ttl starts another reload.
    # A database outage is logged once by the Dependency, not at every reload.
    if not task.cancelled() and (exc := task.exception()) is not None and not is_database_outage(exc):
        log.error("directory reload failed: %s", type(exc).__name__)
