"""The serving heap: Python's cyclic garbage collector kept off it (``gc.freeze``), and its pages.

A loaded bundle holds its id map as one list of a million strings. A full (generation 2) collection
walks every tracked object and every list slot: about 100 ms in a worker serving the 1M-vector bench
bundle with its cache warm, on the event loop's thread, i.e. a p99 spike for whatever requests were in
flight. Freezing after the bundles load moves everything alive then to the permanent generation, which
collections skip (``benchmarks/gc_pauses.py`` measures both). Reference counting still frees frozen objects; only cyclic
garbage among them waits for the next ``freeze_heap(collect=True)`` (run once after a reload retires
old bundles).

**Huge pages.** A graph search reads a few thousand nodes scattered over the index (626 MiB at 1M
vectors); on 4 KiB pages nearly each is a TLB miss. Where the kernel gives transparent huge pages
only to memory that asks (``transparent_hugepage=madvise``, the common default), glibc asks for its
large allocations when the process starts with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(:data:`HUGE_PAGES_TUNABLE`): then ~720 MiB of a worker's heap sits on 2 MiB pages and encode + search
take 0.92x the time, back to back and with 10 ms between queries, with a lower p99 too
(``python -m benchmarks.hugepages``, docs/results/hugepages.md). glibc reads the variable once, at
start, so it is set where processes start: the image, ``make serve``, the benchmarks. ``/info``
reports what a worker got.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"  # the value of GLIBC_TUNABLES the image and make serve set


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


def huge_page_mib() -> int:
    """MiB of this process's anonymous memory on transparent huge pages (0 where it cannot be read)."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) // 1024
    return 0
