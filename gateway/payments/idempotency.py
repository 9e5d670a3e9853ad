"""Idempotency keys (IETF httpapi-idempotency-key draft): the first request runs, a repeat gets the stored answer.

The database is the source of truth: a row per (caller, key) holds the request's fingerprint, its state and, once
done, the answer to replay. Exactly one worker may act on a pending key: it holds a lease in that row, taken with a
single conditional statement, so it is exclusive on SQLite and PostgreSQL alike and expires when its holder dies.
With Redis configured, a lock there is taken first, so concurrent duplicates on any node are turned away without
touching the database. Everything is scoped to the caller: two callers may use the same key.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import http_sf
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.problems import Problem
from gateway.storage.models import IdempotencyKey
from gateway.storage.redis import SharedRedis
from schemas.problems import ProblemCode

log = logging.getLogger("msjx.idempotency")

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
MAX_HEADER_LENGTH = MAX_KEY_LENGTH + 2  # the key as a Structured Field String, in its double quotes
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class ClaimKind(Enum):
    NEW = "new"  # first request with this key: the caller now holds it and must do the work
    RESUME = "resume"  # an earlier attempt did not finish (crash, lost answer): the caller holds it, must reconcile
    REPLAY = "replay"  # done before: answer with the stored response
    IN_FLIGHT = "in_flight"  # another worker holds it right now
    REUSED = "reused"  # the key was used with another request


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    status_code: int | None = None
    body: bytes | None = None


def parse_key(values: list[str]) -> str | None:
    """The key from the Idempotency-Key header lines: None when absent, a 400 problem when malformed.

    The draft makes it a Structured Field String (`Idempotency-Key: "8e03978e-…"`); a bare token is accepted too,
    since many clients send one.
    """
    if not values:
        return None
    if len(values) > 1:
        raise _bad_key("send one Idempotency-Key header, not several")
    if len(values[0]) > MAX_HEADER_LENGTH:
        raise _bad_key(f"Idempotency-Key must be at most {MAX_HEADER_LENGTH} characters, its quotes included")
    try:
        value, params = http_sf.parse(values[0].encode("latin-1"), tltype="item")
    except Exception:  # http_sf raises its own error types for every malformed field
        raise _bad_key('Idempotency-Key must be a Structured Field String, e.g. "8e03978e-40d5-43e8"') from None
    if params or not isinstance(value, str | http_sf.Token):
        raise _bad_key("Idempotency-Key must be a string without parameters")
    key = str(value)
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise _bad_key(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    return key


def _bad_key(detail: str) -> Problem:
    return Problem(ProblemCode.IDEMPOTENCY_KEY_INVALID, detail)


def missing_key(operation: str) -> Problem:
    return Problem(
        ProblemCode.IDEMPOTENCY_KEY_MISSING,
        f"{operation} changes state and needs an Idempotency-Key header (a fresh unique value per payment, the same"
        " value when repeating it); see /docs",
    )


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests the same request: method, path and body bytes."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


NewWork = Callable[[AsyncSession], Awaitable[None]]


class IdempotencyStore:
    """Claims, leases and stored answers of idempotency keys; one per gateway process.

    `owner` names this process (`<node id>/<boot id>`): on start, leases a previous life of the same node left
    behind are released at once instead of waiting for them to expire.
    """

    def __init__(
        self,
        sessions: async_sessionmaker,
        *,
        node_id: str,
        lease_seconds: float,
        redis: SharedRedis | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._sessions = sessions
        self.node_id = node_id
        self.owner = f"{node_id}/{secrets.token_hex(6)}"
        self.lease_ms = int(lease_seconds * 1000)
        self._redis = redis.client if redis is not None else None
        self.clock = clock
        self._prefix = redis.key("idem") + ":" if redis is not None else ""

    async def close(self) -> None:
        """Nothing of its own to release: the shared Redis client is closed by its owner, the runtime."""

    # -- locks ----------------------------------------------------------------------------------------------------

    def _lock_name(self, caller_id: str, key: str) -> str:
        return f"{self._prefix}{caller_id}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    async def _lock(self, caller_id: str, key: str) -> bool:
        if self._redis is None:
            return True
        return bool(await self._redis.set(self._lock_name(caller_id, key), self.owner, nx=True, px=self.lease_ms))

    async def _unlock(self, caller_id: str, key: str) -> None:
        if self._redis is not None:
            await self._redis.eval(_RELEASE, 1, self._lock_name(caller_id, key), self.owner)  # type: ignore[misc]

    async def release_stale(self) -> int:
        """Release leases (and Redis locks) held by an earlier life of this node; returns how many rows."""
        mine = f"{self.node_id}/%"
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.lease_owner.like(mine), IdempotencyKey.lease_owner != self.owner)
                .values(lease_owner=None, lease_until_ms=None)
            )
        if self._redis is not None:
            async for name in self._redis.scan_iter(match=f"{self._prefix}*", count=500):
                holder = await self._redis.get(name)
                if holder is not None and holder.decode().startswith(f"{self.node_id}/"):
                    if holder.decode() != self.owner:
                        await self._redis.eval(_RELEASE, 1, name, holder)  # type: ignore[misc]
        return int(result.rowcount or 0)

    # -- claims ---------------------------------------------------------------------------------------------------

    async def _read(self, caller_id: str, key: str) -> IdempotencyKey | None:
        async with self._sessions() as session:
            return await session.get(IdempotencyKey, (caller_id, key), populate_existing=True)

    @staticmethod
    def _settled(row: IdempotencyKey, fingerprint_: str) -> Claim | None:
        if row.fingerprint != fingerprint_:
            return Claim(ClaimKind.REUSED)
        if row.state == "done":
            return Claim(ClaimKind.REPLAY, row.status_code, row.response_body)
        return None

    async def claim(
        self,
        caller_id: str,
        key: str,
        fingerprint_: str,
        *,
        service: str,
        operation: str,
        on_new: NewWork | None = None,
    ) -> Claim:
        """Decide what this request may do with `key`. On NEW and RESUME the caller holds the key until it calls
        `complete` or `release`; `on_new` adds its own rows (the payment intent) in the transaction that creates
        the key, so both exist or neither does."""
        row = await self._read(caller_id, key)
        if row is not None and (settled := self._settled(row, fingerprint_)) is not None:
            return settled
        if not await self._lock(caller_id, key):
            return Claim(ClaimKind.IN_FLIGHT)
        try:
            claim = await self._claim_locked(caller_id, key, fingerprint_, service, operation, on_new)
        except BaseException:
            await self._unlock(caller_id, key)
            raise
        if claim.kind not in (ClaimKind.NEW, ClaimKind.RESUME):
            await self._unlock(caller_id, key)
        return claim

    async def _claim_locked(
        self,
        caller_id: str,
        key: str,
        fingerprint_: str,
        service: str,
        operation: str,
        on_new: NewWork | None,
    ) -> Claim:
        now = self.clock.ms()
        row = await self._read(caller_id, key)
        if row is None:
            try:
                async with self._sessions() as session, session.begin():
                    session.add(
                        IdempotencyKey(
                            caller_id=caller_id,
                            idem_key=key,
                            fingerprint=fingerprint_,
                            service=service,
                            operation=operation,
                            state="pending",
                            lease_owner=self.owner,
                            lease_until_ms=now + self.lease_ms,
                            created_at=self.clock.now(),
                        )
                    )
                    await session.flush()  # the key's own conflict first: then a conflict in on_new is on_new's
                    if on_new is not None:
                        await on_new(session)
                return Claim(ClaimKind.NEW)
            except IntegrityError:
                row = await self._read(caller_id, key)
                if row is None:  # the key was free, so on_new's own rows conflicted: let it say why
                    raise
        settled = self._settled(row, fingerprint_)
        if settled is not None:
            return settled
        if await self.lease(caller_id, key):
            return Claim(ClaimKind.RESUME)
        row = await self._read(caller_id, key)
        if row is not None and (settled := self._settled(row, fingerprint_)) is not None:
            return settled
        return Claim(ClaimKind.IN_FLIGHT)

    async def lease(self, caller_id: str, key: str) -> bool:
        """Take the lease of a pending key if nobody holds it (or its holder's lease ran out). One statement:
        of two concurrent workers, exactly one gets rowcount 1."""
        now = self.clock.ms()
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.caller_id == caller_id,
                    IdempotencyKey.idem_key == key,
                    IdempotencyKey.state == "pending",
                    or_(IdempotencyKey.lease_until_ms.is_(None), IdempotencyKey.lease_until_ms < now),
                )
                .values(lease_owner=self.owner, lease_until_ms=now + self.lease_ms)
            )
        return result.rowcount == 1

    async def acquire(self, caller_id: str, key: str) -> bool:
        """For background work (the reconciler): the Redis lock, then the lease; False when someone else has it."""
        if not await self._lock(caller_id, key):
            return False
        try:
            if await self.lease(caller_id, key):
                return True
        except BaseException:
            await self._unlock(caller_id, key)
            raise
        await self._unlock(caller_id, key)
        return False

    async def complete(self, session: AsyncSession, caller_id: str, key: str, status_code: int, body: bytes) -> None:
        """Store the answer, in the caller's transaction (with the outcome it records). Call `done` after commit."""
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.caller_id == caller_id, IdempotencyKey.idem_key == key)
            .values(
                state="done",
                status_code=status_code,
                response_body=body,
                lease_owner=None,
                lease_until_ms=None,
                completed_at=self.clock.now(),
            )
        )

    async def done(self, caller_id: str, key: str) -> None:
        await self._unlock(caller_id, key)

    async def release(self, caller_id: str, key: str) -> None:
        """Give the key back unfinished (the outcome is unknown): the next request or the reconciler may take it."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.caller_id == caller_id,
                    IdempotencyKey.idem_key == key,
                    IdempotencyKey.lease_owner == self.owner,
                )
                .values(lease_owner=None, lease_until_ms=None)
            )
        await self._unlock(caller_id, key)

    async def purge(self, before: datetime) -> int:
        """Forget finished keys completed before `before` (the draft's expiry); pending keys are never purged."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.state == "done", IdempotencyKey.completed_at < before)
            )
        return int(result.rowcount or 0)

    async def pending(self, limit: int = 500) -> list[tuple[str, str]]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(IdempotencyKey.caller_id, IdempotencyKey.idem_key)
                .where(IdempotencyKey.state == "pending")
                .order_by(IdempotencyKey.created_at)
                .limit(limit)
            )
            return [(row[0], row[1]) for row in rows]
