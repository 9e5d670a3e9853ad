"""Monthly partitions of `audit_records` on PostgreSQL: made ahead of time so no write meets a missing month,
listed for archiving, and detached and dropped once every row of a month is in a verified archive file."""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.times import BEIJING

log = logging.getLogger("msjx.audit")
# Months are Beijing months (UTC+08:00, as every date the gateway shows): a partition holds FROM its month's first
# millisecond TO the next month's. SQLite keeps one plain table; nothing here applies to it.
PARENT = "audit_records"
# Months made beyond the current one: a write never waits for a month to be made, and a maintenance run that fails
# (database down, a lock not granted) has months of slack before it matters.
MONTHS_AHEAD = 3
# Making a partition takes a lock that lets reads and writes go on (ATTACH: SHARE UPDATE EXCLUSIVE); dropping one
# takes an exclusive lock, which appends queue behind. Neither may wait long behind a slow search: fail, try again.
LOCK_TIMEOUT = "2s"
# One maintainer at a time across workers and nodes (two that both find a month missing would race to make it).
ADVISORY_LOCK = 0x6D736A7861756469  # "msjxaudi"
_NAME = re.compile(r"audit_records_\d{4}_\d{2}")
_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


@dataclass(frozen=True, order=True)
class Partition:
    low_ms: int
    high_ms: int
    name: str

    @property
    def month(self) -> str:
        moment = datetime.fromtimestamp(self.low_ms / 1000, BEIJING)
        return f"{moment.year:04d}-{moment.month:02d}"


def month_of(ts_ms: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(ts_ms / 1000, BEIJING)
    return moment.year, moment.month


def shift(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + months
    return index // 12, index % 12 + 1


def month_start_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=BEIJING).timestamp() * 1000)


def month_partition(year: int, month: int) -> Partition:
    following = shift(year, month, 1)
    return Partition(month_start_ms(year, month), month_start_ms(*following), f"{PARENT}_{year:04d}_{month:02d}")


def months_between(first_ms: int, last_ms: int) -> list[tuple[int, int]]:
    """Every month from the one holding `first_ms` to the one holding `last_ms`, both included."""
    months, current, last = [], month_of(first_ms), month_of(last_ms)
    while current <= last:
        months.append(current)
        current = shift(*current, 1)
    return months


async def is_partitioned(connection: AsyncConnection) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    kind = await connection.execute(
        text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:t)"), {"t": PARENT}
    )
    return kind.scalar() == "p"


async def list_partitions(connection: AsyncConnection) -> list[Partition]:
    """The attached partitions, oldest first."""
    result = await connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": PARENT},
    )
    partitions = []
    for name, bound in result:
        found = _BOUND.search(bound or "")
        if found is None:  # a DEFAULT partition (none is made here) has no range
            continue
        partitions.append(Partition(int(found.group(1)), int(found.group(2)), name))
    return sorted(partitions)


async def ensure_months(engine: AsyncEngine, months: list[tuple[int, int]]) -> list[Partition]:
    """Make the partitions of `months` that are missing; return every partition attached afterwards."""
    async with engine.begin() as connection:
        if not await is_partitioned(connection):
            return []
        await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})
        existing = await list_partitions(connection)
        made = []
        for year, month in months:
            wanted = month_partition(year, month)
            if any(p.low_ms < wanted.high_ms and wanted.low_ms < p.high_ms for p in existing):
                continue
            await _attach(connection, wanted)
            made.append(wanted)
            existing = sorted([*existing, wanted])
    if made:
        log.info("audit partitions made: %s", ", ".join(p.name for p in made))
    return existing


async def _attach(connection: AsyncConnection, partition: Partition) -> None:
    # LIKE + ATTACH rather than CREATE TABLE … PARTITION OF: the latter locks the whole log against writes.
    # Names come from month_partition (digits only), never from input.
    name = partition.name
    await connection.execute(text(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS)"))
    await connection.execute(
        text(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {name}"
            f" FOR VALUES FROM ({partition.low_ms}) TO ({partition.high_ms})"
        )
    )
    # Row triggers follow the parent into every partition, but TRUNCATE of a partition by name would not meet the
    # parent's statement trigger.
    await connection.execute(
        text(
            f"CREATE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON {name}"
            " FOR EACH STATEMENT EXECUTE FUNCTION msjx_audit_append_only()"
        )
    )


async def ensure_ahead(engine: AsyncEngine, now_ms: int, ahead: int = MONTHS_AHEAD) -> list[Partition]:
    """The current month and `ahead` more: what start-up and the periodic task make sure of."""
    this_month = month_of(now_ms)
    last = shift(*this_month, ahead)
    return await ensure_months(engine, months_between(now_ms, month_start_ms(*last)))


async def ensure_or_list(engine: AsyncEngine, now_ms: int) -> list[Partition]:
    """`ensure_ahead`, or if that fails (a lock not granted in time) the partitions there are: a writer starts
    anyway, and makes a month that is really missing when a batch needs it."""
    try:
        return await ensure_ahead(engine, now_ms)
    except Exception as exc:  # retried later (periodic task, or a batch that needs the month); what exists may do
        log.warning("audit partitions for the coming months could not be made at start: %s", type(exc).__name__)
    async with engine.connect() as connection:
        return await list_partitions(connection) if await is_partitioned(connection) else []


class MonthGuard:
    """What the writer knows of the partitions: a batch whose rows fall in a month not made yet (a clock far off, or
    a maintenance task that has not run for months) has that month made first, rather than failing."""

    def __init__(self, partitions: list[Partition]) -> None:
        self._lows = [p.low_ms for p in partitions]
        self._highs = [p.high_ms for p in partitions]
        # The month of the latest row: nearly every row falls in it, so the check is two comparisons.
        self._low, self._high = (partitions[-1].low_ms, partitions[-1].high_ms) if partitions else (0, 0)

    def update(self, partitions: list[Partition]) -> None:
        self.__init__(partitions)  # type: ignore[misc]

    def covers(self, ts_ms: int) -> bool:
        if self._low <= ts_ms < self._high:
            return True
        index = bisect.bisect_right(self._lows, ts_ms) - 1
        if index >= 0 and ts_ms < self._highs[index]:
            self._low, self._high = self._lows[index], self._highs[index]
            return True
        return False

    def missing(self, stamps: list[int]) -> list[tuple[int, int]]:
        return sorted({month_of(ts) for ts in stamps if not self.covers(ts)})


async def drop_partition(engine: AsyncEngine, partition: Partition) -> None:
    """Detach and drop one month, in one transaction (see `archive_chains`, which calls this only once every row of
    the month is in an archive file that was read back and verified, and registered)."""
    if not _NAME.fullmatch(partition.name):
        raise ValueError(f"{partition.name!r} is not a monthly audit partition")
    async with engine.begin() as connection:
        await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})
        await connection.execute(text(f"ALTER TABLE {PARENT} DETACH PARTITION {partition.name}"))
        await connection.execute(text(f"DROP TABLE {partition.name}"))
    log.info("audit partition %s (%s) detached and dropped", partition.name, partition.month)
