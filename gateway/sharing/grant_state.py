"""What a grant is now (active, suspended, revoked, expired …) and where its delivery stands, from its row."""

from __future__ import annotations

from datetime import datetime

from gateway.storage.models import Grant
from schemas.times import china_date

# The 条例's time for delivery, counted from the day of approval like the decision deadlines.
DELIVERY_WORKING_DAYS = 20


def grant_status(row: Grant, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.valid_to <= now:
        return "expired"
    if row.suspended_at is not None:
        return "suspended"
    if row.valid_from > now:
        return "not_started"
    return "active"


def delivery_state(row: Grant, now: datetime) -> str:
    """`overdue` once the due day (Beijing time) has ended with the grant still not usable; a grant revoked or
    expired before delivery is `cancelled`; a grant an admin issued directly has no such obligation."""
    if row.delivery_due is None:
        return "not_applicable"
    if row.delivered_at is not None:
        return "delivered"
    if row.revoked_at is not None or row.valid_to <= now:
        return "cancelled"
    return "overdue" if china_date(now) > row.delivery_due else "pending"
