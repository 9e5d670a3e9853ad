"""PostgreSQL settings that decide whether a commit the gateway acknowledged survives a crash, and whether this host's
clock agrees with the database's.

A DBA's `ALTER DATABASE … SET synchronous_commit = off` (a common speed-up) lets PostgreSQL answer a commit before
its WAL reaches the disk: an audit record, a payment's intent or outcome, acknowledged and then lost with a crash.
Every connection of the gateway sets it on for itself as it opens (any user may); `fsync = off`, a server setting
nobody can override, is said at every start. So is a host clock far from the database's: signatures are checked,
and audit records stamped, by this host's clock, so a node whose clock drifted judges every signature's window by it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("msjx.storage")

# Run on every new connection: commits wait for the WAL flush (and for synchronous standbys where the server names
# them), whatever the database's or the role's default. A statement, not a startup parameter: PgBouncer refuses
# startup parameters it does not know ("unsupported startup parameter: synchronous_commit").
DURABLE_SESSION = "SET synchronous_commit TO on"


def say_what_is_not_durable(database: str, fsync: str, synchronous_commit: str, where: str) -> None:
    """One line for each setting that would lose acknowledged commits, as a plain connection found them at start."""
    if fsync == "off":
        log.error(
            "PostgreSQL at %s runs with fsync = off: a crash of its machine can lose or corrupt what the gateway"
            " committed (audit records, payments); set fsync = on in postgresql.conf",
            where,
        )
    if synchronous_commit == "off":
        log.warning(
            "the database %s at %s has synchronous_commit = off; the gateway sets it on for its own connections, so"
            " that what it acknowledges is on disk",
            database,
            where,
        )


# Far beyond what NTP leaves between two hosts, well inside MSJX_SIGNATURE_MAX_SKEW's default of 300 s.
CLOCK_TOLERANCE_SECONDS = 2.0


async def say_clock_skew(connection: Any, where: str, clock: Callable[[], float] = time.time) -> float:
    """This host's clock less PostgreSQL's, in seconds (the round trip's midpoint); logged beyond the tolerance."""
    before = clock()
    theirs = float(await connection.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
    after = clock()
    skew = (before + after) / 2 - theirs
    if abs(skew) > CLOCK_TOLERANCE_SECONDS + (after - before) / 2:
        log.error(
            "this host's clock is %.1f s %s PostgreSQL's at %s: signatures are checked, and audit records stamped, by"
            " this host's clock; check that both keep time (timedatectl, chronyc tracking)",
            abs(skew),
            "ahead of" if skew > 0 else "behind",
            where,
        )
    return skew
