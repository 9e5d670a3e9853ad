"""The audit writer's failed commits are logged once per cause, repeated at most once a minute, and the recovery
says how many failed (gateway/audit/commit_failures.py); a full disk end to end is in tests/test_disk_full.py."""

from __future__ import annotations

import logging

import pytest

from gateway.audit.commit_failures import CommitFailures


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeats_are_counted_and_said_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    failures = CommitFailures(logging.getLogger("test.audit"), repeat_seconds=60, clock=clock)
    with caplog.at_level(logging.WARNING, "test.audit"):
        for _ in range(250):
            failures.failed("OperationalError: database or disk is full", 2)
            clock.now += 0.1  # 25 s in all
        assert len(caplog.records) == 1
        assert "audit commit of 2 records failed: OperationalError: database or disk is full" in caplog.messages[0]
        clock.now += 40
        failures.failed("OperationalError: database or disk is full", 3)
        assert caplog.messages[1] == (
            "audit commits still failing: 250 more commits of 501 records in 65 s, the last: OperationalError:"
            " database or disk is full"
        )
        failures.failed("OperationalError: database is locked", 1)  # another cause is said at once
        assert "database is locked" in caplog.messages[2]
        failures.succeeded()
        assert (
            caplog.messages[3]
            == "audit commits succeed again, after 252 failed commits of 504 records (each answered 503)"
        )
        failures.succeeded()
    assert len(caplog.records) == 4
    assert [record.levelname for record in caplog.records] == ["ERROR", "ERROR", "ERROR", "WARNING"]


def test_a_batch_failed_by_the_one_before_is_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    failures = CommitFailures(logging.getLogger("test.audit"))
    with caplog.at_level(logging.WARNING, "test.audit"):
        for _ in range(20):  # as on a full disk with two batches in the committer's pipe: cause, follow-on, …
            failures.failed("OperationalError: database or disk is full", 1)
            failures.failed("OutOfOrder: the batch before it failed", 7, follow_on=True)
        failures.succeeded()
    assert len(caplog.messages) == 2
    assert "database or disk is full" in caplog.messages[0]
    assert (
        caplog.messages[1] == "audit commits succeed again, after 40 failed commits of 160 records (each answered 503)"
    )


def test_a_follow_on_with_no_cause_before_it_is_still_said(caplog: pytest.LogCaptureFixture) -> None:
    failures = CommitFailures(logging.getLogger("test.audit"))
    with caplog.at_level(logging.WARNING, "test.audit"):
        failures.failed("OutOfOrder: the batch before it failed", 3, follow_on=True)
    assert len(caplog.messages) == 1 and "OutOfOrder" in caplog.messages[0]
