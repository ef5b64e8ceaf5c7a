"""Keep Python's cyclic garbage collector off the long-lived heap (``gc.freeze``).

A loaded bundle holds its id map as one list of a million strings. A full (generation 2) collection
walks every tracked object and every list slot: about 100 ms in a worker serving the 1M-vector bench
bundle with its cache warm, on the event loop's thread, i.e. a p99 spike for whatever requests were in
flight. Freezing after the bundles load moves everything alive then to the permanent generation, which
collections skip (``benchmarks/gc_pauses.py`` measures both). Reference counting still frees frozen objects; only cyclic
garbage among them waits for the next ``freeze_heap(collect=True)`` (run once after a reload retires
old bundles).
"""

from __future__ import annotations

import gc
import time


def freeze_heap(*, collect: bool) -> float:
    """Optionally thaw and collect everything first, then freeze what is alive; returns the ms spent."""
    t0 = time.perf_counter()
    if collect:
        gc.unfreeze()
        gc.collect()
    gc.freeze()
    return (time.perf_counter() - t0) * 1e3


def frozen_objects() -> int:
    """Objects in the permanent generation (0 when nothing was frozen)."""
    return gc.get_freeze_count()
