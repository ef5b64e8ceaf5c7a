"""Online recall monitor: how much of the exact top-100 each arm's index really returns, on live queries.

The offline recall@100 in a bundle's manifest was measured once, on held-out queries. Live traffic
drifts. With ``CROPS_RECALL_SAMPLE`` > 0 the service hands that share of its cache misses (query
vector, returned ids, nprobe) to this monitor; off the request path (a thread) it searches the same
vector exactly and exports the mean recall@100 over the last ``CROPS_RECALL_WINDOW`` samples of each
bundle as ``crops_online_recall_at_100{bundle}``. Exact search needs exact vectors: a flat index is
its own ground truth, an IVF-Flat index gives them back through its direct map, an index with a flat
refine stage through that stage; for others (plain PQ) the monitor says so once and skips them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from collections import deque
from typing import Any

import numpy as np

log = logging.getLogger("service.recall")

K = 100


def exact_index(index: Any) -> Any | None:
    """A faiss index giving exact inner-product results over the same vectors, or None."""
    import faiss

    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexFlat):
        return idx
    refine = getattr(idx, "refine_index", None)
    if refine is not None:
        flat = faiss.downcast_index(refine)
        if isinstance(flat, faiss.IndexFlat):
            return flat
    ivf = faiss.try_extract_index_ivf(idx)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat):
        # read the inverted lists (raw float vectors) without touching the serving index
        vectors = np.zeros((ivf.ntotal, ivf.d), dtype=np.float32)
        lists: Any = ivf.invlists
        for no in range(ivf.nlist):
            n = lists.list_size(no)
            if n == 0:
                continue
            rows = faiss.rev_swig_ptr(lists.get_ids(no), n).copy()
            codes = faiss.rev_swig_ptr(lists.get_codes(no), n * lists.code_size).copy()
            vectors[rows] = codes.view(np.float32).reshape(n, ivf.d)
        flat = faiss.IndexFlatIP(ivf.d)
        flat.add(vectors)
        return flat
    return None


class RecallMonitor:
    """Samples live misses and measures their recall@100 against exact search, per bundle."""

    def __init__(self, *, share: float, window: int, gauge: Any, max_pending: int = 1000) -> None:
        self.share = share
        self.window = window
        self.gauge = gauge
        self._pending: deque[tuple[str, Any, np.ndarray, list[str], int | None]] = deque(maxlen=max_pending)
        self._recalls: dict[str, deque[float]] = {}
        self._exact: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # retriever -> exact
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.share > 0

    def offer(self, bundle: str, runtime: Any, vector: np.ndarray, ids: list[str], nprobe: int | None) -> None:
        """On the request path: keep this miss with probability ``share`` (O(1), never blocks)."""
        if self.share >= 1.0 or random.random() < self.share:
            self._pending.append((bundle, runtime, vector, ids, nprobe))
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = [self._pending.popleft() for _ in range(len(self._pending))]
            if batch:
                await asyncio.to_thread(self._measure, batch)

    def _measure(self, batch: list[tuple[str, Any, np.ndarray, list[str], int | None]]) -> None:
        for bundle, rt, vector, ids, _nprobe in batch:
            retriever = rt.retriever
            if retriever not in self._exact:
                self._exact[retriever] = exact_index(retriever.index)
                if self._exact[retriever] is None:
                    log.warning("recall monitor: no exact vectors in %s's index; not monitored", bundle)
            exact = self._exact[retriever]
            if exact is None:
                continue
            k = min(K, len(retriever.ids))
            _, rows = exact.search(np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32), k)
            truth = {retriever.ids[i] for i in rows[0] if i >= 0}
            if not truth:
                continue
            recall = len(truth & set(ids[:k])) / len(truth)
            window = self._recalls.setdefault(bundle, deque(maxlen=self.window))
            window.append(recall)
            self.gauge.labels(bundle=bundle).set(sum(window) / len(window))

    def summary(self) -> dict[str, Any]:
        return {b: {"samples": len(w), "recall_at_100": sum(w) / len(w)} for b, w in self._recalls.items() if w}
