"""The health of the stores the gateway depends on (database, Redis), as the request path finds it.

When a store goes away, thousands of requests fail the same way in seconds; a traceback each buried the logs
(18 MB in 15 s). Each store has one `Dependency`: it logs one warning when the store fails, one when it answers
again (saying how many failures came between), and counts every failure in Prometheus in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.http.problems import Problem
from schemas.problems import ProblemCode

log = logging.getLogger("msjx.dependencies")

FAILURES = Counter(
    "msjx_dependency_failures_total",
    "Operations that failed because a store the gateway depends on was unavailable",
    ["dependency"],
)
UP = Gauge(
    "msjx_dependency_up",
    "1 while the store answers, 0 from its first failure until it answers again",
    ["dependency"],
    multiprocess_mode="livemin",  # under several workers: 0 while any live worker finds the store down
)

# What a store that is down or unreachable raises (as opposed to a bug or a refused statement).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    ConnectionError,
    TimeoutError,
    OSError,
)


# asyncpg's errors for a server that went away or is not accepting connections yet (the audit committer uses
# asyncpg directly, and SQLAlchemy wraps them as `orig`).
_ASYNCPG_OUTAGES = frozenset(
    {"AdminShutdownError", "CannotConnectNowError", "CrashShutdownError", "InterfaceError", "TooManyConnectionsError"}
)


def is_database_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database is unreachable or going away (not that a statement was wrong)."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        if exc.connection_invalidated or (orig is not None and orig is not exc and is_database_outage(orig)):
            return True
    if isinstance(exc, DATABASE_ERRORS):
        return True
    name = type(exc).__name__
    return type(exc).__module__.startswith("asyncpg") and ("Connection" in name or name in _ASYNCPG_OUTAGES)


# SQLSTATEs of a statement the server gave up on, not a wrong one: its statement_timeout or an operator's cancel
# (57014), lock_timeout (55P03). A DBA's default of either reached the API as a 500 with a traceback.
_CANCELLED = frozenset({"57014", "55P03"})
CANCELLED = Counter(
    "msjx_database_statements_cancelled_total",
    "Statements the database gave up on (statement_timeout, lock_timeout, a cancel), by what the gateway was doing",
    ["operation"],
)
SAY_CANCELLED_EVERY = 60.0


def is_statement_cancelled(exc: BaseException) -> bool:
    """Whether the database gave up on a statement (a timeout, or a cancel), as asyncpg or SQLAlchemy raise it."""
    orig = getattr(exc, "orig", None)
    for candidate in (exc, orig, getattr(orig, "__cause__", None)):
        if getattr(candidate, "sqlstate", None) in _CANCELLED:
            return True
    return False


class Cancellations:
    """Statements the database gave up on: each counted; logged once, then at most once a minute with the number
    since, since a tight statement_timeout cancels every slow query alike. The database itself is up."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._said_at: float | None = None
        self._unsaid = 0

    def problem(self, operation: str, exc: BaseException) -> Problem:
        CANCELLED.labels(operation).inc()
        self._unsaid += 1
        now = self._clock()
        if self._said_at is None or now - self._said_at >= SAY_CANCELLED_EVERY:
            log.warning(
                "the database cancelled %d statement(s) (last in %s: %s): a statement_timeout or lock_timeout of the"
                " database or role, or an operator's cancel; answered 503 database_timeout",
                self._unsaid,
                operation,
                str(getattr(exc, "orig", None) or exc).splitlines()[0][:200],
            )
            self._said_at, self._unsaid = now, 0
        return Problem(
            ProblemCode.DATABASE_TIMEOUT,
            "the database gave up on a query (its statement_timeout, or an operator's cancel); retry later, or ask"
            " for less (a narrower time range or filter)",
            headers={"Retry-After": "1"},
        )


class Dependency:
    """One store's state as seen from this process: up until an operation fails, down until one succeeds."""

    def __init__(self, name: str, code: ProblemCode, retry_after: int = 1) -> None:
        self.name = name
        self.code = code
        self.retry_after = retry_after
        self.up = True
        self.failures = 0  # since it went down
        UP.labels(name).set(1)

    def failed(self, exc: BaseException) -> None:
        FAILURES.labels(self.name).inc()
        self.failures += 1
        if self.up:
            self.up = False
            UP.labels(self.name).set(0)
            log.warning(
                "%s unavailable (%s: %s): answering 503 %s until it is back; failures are counted in"
                " msjx_dependency_failures_total",
                self.name,
                type(exc).__name__,
                str(exc)[:200],
                self.code,
            )

    def succeeded(self) -> None:
        if not self.up:
            self.up = True
            UP.labels(self.name).set(1)
            log.warning("%s is back after %d failed operations", self.name, self.failures)
            self.failures = 0

    def problem(self, detail: str) -> Problem:
        """The 503 a request gets while the store is unavailable."""
        return Problem(self.code, detail, headers={"Retry-After": str(self.retry_after)})
