"""Whether PostgreSQL and Redis let this node open the connections it needs: their limits (the database's and the
role's CONNECTION LIMIT, max_connections; Redis's maxclients) against what the node's workers open, read once
before they start.

A PostgreSQL limit below what a node needs to start hung `serve` for 30 s and ended it with a 106-line traceback;
one below what it opens under load failed audit checkpoints and batch chunks with "too many connections" while
serving. A Redis maxclients below the client's pool answered most calls of a burst 503 (MaxClientsReachedError),
where a pool capped below it makes them wait for a connection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("msjx.storage")
COMMITTER_CONNECTIONS = 1  # the audit committer's own (gateway/audit/committer.py)
POOL_SIZE, POOL_OVERFLOW = 10, 10  # the engine's pool on PostgreSQL (gateway/storage/db.py): kept, and opened beyond
POOL_CONNECTIONS = POOL_SIZE + POOL_OVERFLOW


def queue_connections(batch_workers: int) -> int:
    """The batch queue's pool on PostgreSQL (gateway/batches/queue.py): the worker's LISTEN, its fetch, and one for
    each chunk running."""
    return max(2, batch_workers + 2)


@dataclass(frozen=True)
class Need:
    """Connections a node opens, at start and at most under load: `workers` of them, each running `batch_workers`
    chunks at a time (MSJX_BATCH_WORKERS)."""

    workers: int
    batch_workers: int

    @property
    def queue(self) -> int:
        return queue_connections(self.batch_workers)

    @property
    def per_worker(self) -> int:
        return POOL_CONNECTIONS + COMMITTER_CONNECTIONS + self.queue

    @property
    def at_most(self) -> int:
        return self.workers * self.per_worker

    @property
    def to_start(self) -> int:
        # One pooled connection for the start-up's queries, the committer's, and the batch queue's pool filled (its
        # worker LISTENs on one and fetches chunks on another): below that the queue's pool did not open.
        return self.workers * (1 + COMMITTER_CONNECTIONS + self.queue)

    def describe(self) -> str:
        split = f"{POOL_CONNECTIONS} pool + {COMMITTER_CONNECTIONS} audit writer + {self.queue} batch queue"
        return f"{self.workers} × ({split})" if self.workers > 1 else split


@dataclass(frozen=True)
class Limit:
    """One limit that applies to this role's connections to this database, and what already uses it."""

    name: str  # how to change it
    allowed: int
    in_use: int  # by others

    @property
    def free(self) -> int:
        return self.allowed - self.in_use


def limits(row: Any) -> list[Limit]:
    """The limits that apply, from `_ROOM`'s row; a superuser is held by max_connections alone."""
    database, role = row["database"], row["role"]
    found = []
    if not row["superuser"] and row["database_limit"] >= 0:
        found.append(Limit(f"CONNECTION LIMIT of the database {database}", row["database_limit"], row["on_database"]))
    if not row["superuser"] and row["role_limit"] >= 0:
        found.append(Limit(f"CONNECTION LIMIT of the role {role}", row["role_limit"], row["of_role"]))
    if row["superuser"]:
        found.append(Limit("max_connections", row["max_connections"], row["on_server"]))
    else:
        server = row["max_connections"] - row["reserved"]
        found.append(Limit("max_connections less the reserved ones", server, row["on_server"]))
    return found


_ROOM = """
SELECT current_user AS role, current_database() AS database, r.rolsuper AS superuser,
       d.datconnlimit AS database_limit, r.rolconnlimit AS role_limit,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int
         + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved,
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()) AS on_database,
       (SELECT count(*) FROM pg_stat_activity WHERE usename = current_user) AS of_role,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS on_server
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""


async def check_connection_room(connection: Any, need: Need, where: str, own: int) -> str | None:
    """Why the node cannot start, when a limit leaves less room than it needs to start (its start-up is refused in
    that line); a limit below what it may open under load is said once, as a warning. Several nodes share the
    limits: each node sees the others' use. `own` is the number of connections the start-up check itself holds,
    which the counts leave out."""
    row = dict(await connection.fetchrow(_ROOM))
    for counted in ("on_database", "of_role", "on_server"):
        row[counted] -= own
    role, database = row["role"], row["database"]
    found = limits(row)
    tightest = min(found, key=lambda limit: limit.free)
    if tightest.free < need.to_start:
        return (
            f"MSJX_DATABASE_URL: PostgreSQL at {where} has room for {max(tightest.free, 0)} more connections of the"
            f" role {role} to the database {database} ({tightest.name}: {tightest.allowed}, {tightest.in_use} in use);"
            f" this node needs {need.to_start} to start and opens up to {need.at_most} ({need.describe()}); raise"
            " the limit, or run fewer workers or batch slots (MSJX_BATCH_WORKERS)"
        )
    lowest = min(found, key=lambda limit: limit.allowed)
    if lowest.allowed < need.at_most:
        log.warning(
            "PostgreSQL at %s allows the role %s %d connections to the database %s (%s); this node opens up to %d"
            " under load (%s), and what finds no connection fails (an audit checkpoint, a batch chunk, a call with"
            " 503): raise the limit to the sum over all nodes (docs/deploy.md)",
            where,
            role,
            lowest.allowed,
            database,
            lowest.name,
            need.at_most,
            need.describe(),
        )
    return None


def redis_room(maxclients: int, connected: int, workers: int, pool: int, where: str) -> str | None:
    """Why the node cannot start on this Redis (`connected` counts the check's own client), or None; a maxclients
    below what its workers' pools may open is said once, as a warning. Each worker needs one connection to work:
    commands wait for a connection of its pool, and go out in pipelines."""
    if maxclients <= 0:  # not said by this Redis
        return None
    room = maxclients - (connected - 1)
    if room < workers:
        return (
            f"MSJX_REDIS_URL: Redis at {where} has room for {max(room, 0)} more clients (maxclients {maxclients},"
            f" {connected - 1} connected); this node needs {workers} to start and opens up to {workers * pool}"
            f" ({_redis_split(workers, pool)}); raise maxclients, or run fewer workers"
        )
    if maxclients < workers * pool:
        log.warning(
            "Redis at %s takes at most %d clients (maxclients); this node opens up to %d (%s), and a command that"
            " finds none fails with 503: set MSJX_REDIS_MAX_CONNECTIONS so that all nodes' workers together stay"
            " below maxclients (commands then wait for a connection of their pool), or raise maxclients",
            where,
            maxclients,
            workers * pool,
            _redis_split(workers, pool),
        )
    return None


def _redis_split(workers: int, pool: int) -> str:
    each = f"MSJX_REDIS_MAX_CONNECTIONS {pool}"
    return f"{workers} workers × {each}" if workers > 1 else each
