"""faiss helpers: factory choice, search-parameter setting, exact ground truth, recall."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLAT_THRESHOLD = 50_000


def choose_factory(n: int, dim: int) -> str:
    """Flat below ``FLAT_THRESHOLD`` vectors; IVF-PQ with an exact refine stage above.

    IVF-PQ alone saturates near recall@100 0.72 on 384-d MiniLM-like vectors whatever nprobe
    (DESIGN.md §8), so the default re-ranks PQ candidates against the stored vectors (RFlat).
    nlist ≈ 4·sqrt(n) keeps ~250 vectors per list at 1M, and at least 39 training points per
    centroid as faiss requires.
    """
    if n < FLAT_THRESHOLD:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    nlist = max(64, min(nlist, n // 39))
    m = dim // 8 if dim % 8 == 0 else dim // 4
    return f"IVF{nlist},PQ{m},RFlat"


def ivf_of(index: Any) -> Any:
    """The IVF layer of an index (looking through refine/pre-transform wrappers), or None."""
    import faiss

    return faiss.try_extract_index_ivf(index)


def set_search_params(index: Any, nprobe: int | None = None, k_factor: float | None = None) -> None:
    import faiss

    if nprobe is not None:
        ivf = ivf_of(index)
        if ivf is not None:
            ivf.nprobe = int(nprobe)
    if k_factor is not None:
        refine = faiss.try_extract_index_refine(index) if hasattr(faiss, "try_extract_index_refine") else None
        target = refine if refine is not None else index
        if hasattr(target, "k_factor"):
            target.k_factor = float(k_factor)


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids (the ground truth recall is measured against)."""
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, ids = flat.search(queries, min(k, base.shape[0]))
    return ids


def recall_vs_exact(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-k found by the index (ids < 0 are misses)."""
    hits = 0
    for f, t in zip(found, truth, strict=True):
        hits += len(set(f[f >= 0].tolist()).intersection(t[t >= 0].tolist()))
    return hits / max(1, int((truth >= 0).sum()))
