"""A clock tests set and advance by hand, given to the gateway where it asks for "now" (gateway.clock.Clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ManualClock:
    def __init__(self, moment: datetime | None = None) -> None:
        self.moment = moment or datetime(2025, 9, 1, 2, 0, tzinfo=UTC)  # aware, in the zone it was given

    def set(self, moment: datetime) -> None:
        self.moment = moment

    def advance(self, **delta: float) -> None:
        """`advance(seconds=1.5)`, `advance(days=1)`: as `timedelta` takes them."""
        self.moment += timedelta(**delta)

    def now(self) -> datetime:
        return self.moment.astimezone(UTC)

    def time(self) -> float:
        return self.moment.timestamp()

    def ms(self) -> int:
        return (self.moment - EPOCH) // timedelta(milliseconds=1)  # exact, where a float timestamp may round down
