"""States of a sharing request, who acts, and the states that time alone changes (granted at start, expired at end).

    draft ──endorse──▶ submitted ──approve──▶ approved ──(valid_from)──▶ granted ──revoke──▶ revoked
      ▲                 │  │  │                  │                         └──(valid_to)──▶ expired
      └──── returned ◀──┘  │  └─refuse─▶ refused └──revoke / (valid_to) ──▶ revoked / expired
            (endorse again) └─extend / escalate (stays submitted)

A stored state lags time by at most one sweep; `effective_state` is what it is now, and what the API shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.access.directory import CallerInfo
from gateway.storage.models import SharingRequest
from schemas.times import china_date

DRAFT = "draft"
SUBMITTED = "submitted"
APPROVED = "approved"
REFUSED = "refused"
RETURNED = "returned"
GRANTED = "granted"
REVOKED = "revoked"
EXPIRED = "expired"

EDITABLE = frozenset({DRAFT, RETURNED})
DECIDED = frozenset({APPROVED, REFUSED, GRANTED, REVOKED, EXPIRED})
LIVE = frozenset({APPROVED, GRANTED})
# The 条例's time for delivery, counted from the day of approval like the decision deadlines.
DELIVERY_WORKING_DAYS = 20


@dataclass(frozen=True)
class Actor:
    """Who makes a transition: a caller, or the gateway itself (`system`) for rules and deadlines."""

    caller_id: str
    department: str | None
    roles: frozenset[str]

    @classmethod
    def of(cls, caller: CallerInfo) -> Actor:
        return cls(caller.caller_id, caller.department, caller.roles)

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    def in_department(self, department: str) -> bool:
        return "department" in self.roles and self.department == department


SYSTEM = Actor("system", None, frozenset({"system"}))


def effective_state(row: SharingRequest, now: datetime) -> str:
    if row.state in LIVE and row.valid_to <= now:
        return EXPIRED
    if row.state == APPROVED and row.valid_from is not None and row.valid_from <= now:
        return GRANTED
    return row.state


def is_overdue(row: SharingRequest, now: datetime) -> bool:
    """Past the provider's deadline: the due day (Beijing time) has ended without a decision."""
    return row.state == SUBMITTED and row.due_date is not None and china_date(now) > row.due_date
