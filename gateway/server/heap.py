"""The garbage collector's settings for a serving process: the start-up heap frozen, young objects collected in
larger batches. Measured with `python -m bench` (docs/performance.md): p99 under full load 82 → 25 ms."""

from __future__ import annotations

import gc

# A request allocates a few hundred container objects, so Python's default threshold (700) ran a young-generation
# pass every other request or so; at 10,000 one runs every few dozen requests, and costs about the same.
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Call once, when start-up is done (adapters built, WSDLs parsed, schemas compiled).

    Everything alive then lives as long as the process: frozen, the full collections that the collector runs every
    so often no longer walk it, and those walks were the long pauses behind the gateway's p99.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
