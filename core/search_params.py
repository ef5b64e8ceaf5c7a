"""The search knobs of a faiss index (IVF nprobe, refine k_factor, HNSW efSearch) and the operating
point a bundle's manifest records: the builder sets them while tuning, the service and the
benchmarks load the same point through ``apply_manifest_params``."""

from __future__ import annotations

from typing import Any

from core.manifest import IndexSection


def ivf_of(index: Any) -> Any:
    """The IVF layer of an index (looking through refine/pre-transform wrappers), or None."""
    import faiss

    return faiss.try_extract_index_ivf(index)


def refine_of(index: Any) -> Any:
    """The top-level refine wrapper (IndexRefine / IndexRefineFlat), or None."""
    import faiss

    top = faiss.downcast_index(index)
    return top if isinstance(top, faiss.IndexRefine) else None


def hnsw_of(index: Any) -> Any:
    """The HNSW graph (``faiss.HNSW``, holding ``efSearch``) of an HNSW index under any refine, or None."""
    import faiss

    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexRefine):
        node = faiss.downcast_index(node.base_index)
    return node.hnsw if isinstance(node, faiss.IndexHNSW) else None


def set_search_params(
    index: Any, nprobe: int | None = None, k_factor: float | None = None, ef_search: int | None = None
) -> None:
    """Set the search effort an index has a knob for (IVF nprobe, refine k_factor, HNSW efSearch);
    a knob the index lacks is ignored."""
    if nprobe is not None:
        ivf = ivf_of(index)
        if ivf is not None:
            ivf.nprobe = int(nprobe)
    if k_factor is not None:
        refine = refine_of(index)
        if refine is not None:
            refine.k_factor = float(k_factor)
    hnsw = hnsw_of(index)
    if hnsw is not None:
        # faiss' default bounded candidate queue finds the next candidate by a scan that grows with
        # efSearch; the unbounded heap returns the same top-100 in 0.90x the time at efSearch 896 and
        # 0.80x at 2048 (0.90-1.04x at 512 and below), and below k it still searches with max(efSearch,
        # k) where the bounded queue loses recall (`python -m benchmarks.hnsw_queue`,
        # docs/results/hnsw_queue_1M.md).
        hnsw.search_bounded_queue = False
        if ef_search is not None:
            hnsw.efSearch = int(ef_search)


def apply_manifest_params(index: Any, section: IndexSection) -> None:
    """Set ``index`` to the operating point an ``IndexSection`` records (what the service serves)."""
    set_search_params(index, nprobe=section.nprobe, k_factor=section.k_factor,
                      ef_search=section.ef_search)


def describe_point(nprobe: int | None, k_factor: float | None, ef_search: int | None) -> str:
    """An operating point in words, for reports and CLI summaries: ``efSearch 1024``, ``nprobe 96 /
    k_factor 8``, or ``exhaustive`` for an index without a search knob."""
    if ef_search is not None:
        return f"efSearch {ef_search}" + (f" / k_factor {k_factor:g}" if k_factor is not None else "")
    if nprobe is not None:
        return f"nprobe {nprobe}" + (f" / k_factor {k_factor:g}" if k_factor is not None else "")
    return "exhaustive"
