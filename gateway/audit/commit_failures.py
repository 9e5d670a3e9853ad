"""The audit writer's failed commits, logged once per cause rather than once per batch.

A full disk failed every commit: one ERROR line each (252 in 2 s of a loaded gateway), which can fill the log's disk
too. Now each cause is logged in full once; its repeats, and the batches that failed only because the one before them
did, are counted and said at most once a minute; the first commit that succeeds says how many failed in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

REPEAT_SECONDS = 60.0


class CommitFailures:
    def __init__(
        self, log: logging.Logger, repeat_seconds: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._repeat = repeat_seconds
        self._clock = clock
        self._causes: set[str] = set()  # logged since the last success
        self._logged_at = 0.0
        self.commits = 0  # failed since the last success
        self.records = 0
        self._unlogged_commits = 0
        self._unlogged_records = 0

    def failed(self, cause: str, records: int, *, follow_on: bool = False) -> None:
        """`follow_on`: the batch failed because the one before it did (the committer's pipe holds two), which says
        nothing new about the cause."""
        self.commits += 1
        self.records += records
        now = self._clock()
        if cause not in self._causes and not (follow_on and self._causes):
            if not self._causes:
                self._logged_at = now
            self._causes.add(cause)
            self._log.error(
                "audit commit of %d records failed: %s; the calls are answered 503 audit_unavailable, and repeats are"
                " counted, logged at most once a minute",
                records,
                cause,
            )
            return
        self._unlogged_commits += 1
        self._unlogged_records += records
        if now - self._logged_at >= self._repeat:
            self._log.error(
                "audit commits still failing: %d more commits of %d records in %.0f s, the last: %s",
                self._unlogged_commits,
                self._unlogged_records,
                now - self._logged_at,
                cause,
            )
            self._logged_at = now
            self._unlogged_commits = self._unlogged_records = 0

    def succeeded(self) -> None:
        if not self._causes:
            return
        self._log.warning(
            "audit commits succeed again, after %d failed commits of %d records (each answered 503)",
            self.commits,
            self.records,
        )
        self._causes.clear()
        self.commits = self.records = 0
        self._unlogged_commits = self._unlogged_records = 0
