"""Bytes per entry of the in-process nonce store at a steady rate, by tracemalloc on a simulated clock.

`python -m bench.nonce_memory [rate] [seconds]` (default 1,200 claims a second for 300 s, the skew window).
"""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from datetime import UTC, datetime

from gateway.access.nonces import MemoryNonceStore

KEY_ID = "platform.efb43ad3c902"  # the shape of a real key id; nonces as `secrets.token_urlsafe(18)` writes them


class SimulatedClock:
    """A gateway.clock.Clock the measurement moves on by hand, one simulated second at a time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.seconds, UTC)

    def time(self) -> float:
        return self.seconds

    def ms(self) -> int:
        return int(self.seconds * 1000)


async def measure(rate: int, seconds: int, skew: int = 300) -> tuple[int, float]:
    """(entries held, bytes allocated for them) after `seconds` of `rate` claims a second."""
    clock = SimulatedClock(1_000_000_000.0)
    store = MemoryNonceStore(clock)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for second in range(seconds):
        created = int(clock.time())
        for i in range(rate):
            await store.claim(KEY_ID, f"n{second:07d}{i:06d}abcdefghijklmnopq", created, skew)
        clock.advance(1)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return len(store), used


def main() -> None:
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    entries, used = asyncio.run(measure(rate, seconds))
    print(f"{entries} entries, {used / entries:.1f} bytes/entry, {used / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
