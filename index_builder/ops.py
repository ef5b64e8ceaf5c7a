"""Build, grow and shrink a faiss index whose labels are always the rows of the bundle's id map.

Invariant kept by every function here: the live labels are exactly ``0 .. ntotal-1`` and label ``r``
is row ``r`` of ``id_map.json``. The service maps search results through the id map without any
side table, and checks ``len(id_map) == index.ntotal``.

- add: new rows get labels ``ntotal ..``; IVF layers take them via ``add_with_ids``, the refine store
  and flat indexes append (their positions are the labels).
- remove: the IVF layer drops the labels (``remove_ids``) and the survivors are renumbered in place
  (one pass over the inverted lists' id arrays, no re-encoding); flat stores compact themselves
  (``remove_ids`` shifts rows), which is the same renumbering; the id map drops the same rows.
  Video ids never change; row numbers are internal.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from core.errors import CropsError, ErrorKind
from core.search_params import hnsw_of
from index_builder.faiss_utils import PQ8_MIN_VECTORS, gpu_count

log = logging.getLogger(__name__)

# Training sample cap: ~100 points per centroid at nlist 1024 gives centroids as good for search as
# faiss' default 256 per centroid, at 40 % of the k-means cost (the dominant build cost on CPU).
MAX_TRAIN = 100_000
# HNSW graph build effort (faiss' default is 40). On the 1M bench vectors with real (MIMICS) queries,
# HNSW32,SQ8 built at 40 (62 s on 2 cores) needed efSearch 2560 for recall@100 0.95: 8.9 ms p50 a
# query end to end; built at 160 it reads 0.963 at efSearch 1024, where the graph built at 40 reads
# 0.905 (docs/results/index_memory_1M*.md). Built at 400 (2.4x the build time of 160) the graph has more
# links per node, and gives more recall for the same work: 0.957 at efSearch 512 with 0.80x the vectors
# scored of the graph built at 160 at 0.959. Tuned to the same target, it scores ~11% more vectors a
# query and holds 0.967 on held-out queries against 0.953 (docs/results/graph_build_effort_1M.md).
HNSW_EF_CONSTRUCTION = 400
# Rows per faiss add call: a long add (a 1M-row graph takes 13-18 min on 2 cores) shows progress
# between chunks. IVF and flat layers encode each row on its own, so chunks change nothing; a graph
# inserts each chunk into the graph the earlier chunks built (as hnswlib inserts row by row).
ADD_CHUNK = 100_000
# A graph index's stored rows are permuted into the order of a coarse k-means clustering after the
# build (``store_in_locality_order``): the graph is the same, but a node's neighbours, mostly in its
# own cluster, now lie close in memory, and a search bound by memory latency touches fewer pages. On
# the 1M bench HNSW32,SQ8 searched 1.20-1.29x faster at the same recall; building the
# graph with the rows inserted in cluster order was about as fast but lost up to 0.008 recall
# (docs/results/graph_order_1M.md).
# Below ~10k rows the index fits in cache and the order does not matter.
LOCALITY_MIN_ROWS = 10_000
LOCALITY_ROWS_PER_CLUSTER = 500


def _parts(index: Any) -> tuple[Any, Any, Any]:
    """(top, base without refine, refine store or None), each downcast."""
    import faiss

    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexRefine):
        return top, faiss.downcast_index(top.base_index), faiss.downcast_index(top.refine_index)
    return top, top, None


def new_index(factory: str, dim: int) -> Any:
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "bad factory"
        raise CropsError(ErrorKind.INVALID_INPUT, f"invalid faiss factory string {factory!r}: {first}") from exc
    hnsw = hnsw_of(index)
    if hnsw is not None:
        hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


def _no_polysemous(base: Any) -> None:
    """Skip polysemous training (on by default for factory "PQ" codes): its annealing took ~15 min
    for 20k vectors here, and only polysemous Hamming filtering, which we never enable, uses it."""
    import faiss

    ivf = faiss.try_extract_index_ivf(base)
    for node in (faiss.downcast_index(ivf) if ivf is not None else None, faiss.downcast_index(base)):
        if node is not None and hasattr(node, "do_polysemous_training"):
            node.do_polysemous_training = False


def _ivf_gpu_unsupported(ivf: Any, factory: str) -> str | None:
    """Why faiss GPU cannot train and fill this IVF part (None: it can, or there is no IVF part)."""
    import faiss

    node = faiss.downcast_index(ivf) if ivf is not None else None
    nbits = node.pq.nbits if isinstance(node, faiss.IndexIVFPQ) else 8
    if nbits != 8:
        return (f"faiss GPU builds IVF-PQ with 8-bit codes only, and {factory} has {nbits}-bit codes "
                f"(what the default picks below {PQ8_MIN_VECTORS:,} vectors)")
    return None


def gpu_unsupported(factory: str, dim: int) -> str | None:
    """Why faiss GPU cannot train and fill ``factory``'s IVF part, or None when it can (or when there
    is no IVF part: those indexes are built on the CPU wherever they run)."""
    import faiss

    index = new_index(factory, dim)  # kept in a name: the parts below are views into it
    return _ivf_gpu_unsupported(faiss.try_extract_index_ivf(_parts(index)[1]), factory)


def require_gpu_buildable(factory: str, dim: int) -> None:
    """Fail (``--device cuda``) when faiss GPU cannot build ``factory``'s IVF part."""
    if reason := gpu_unsupported(factory, dim):
        raise CropsError(ErrorKind.INVALID_INPUT, f"--device cuda: {reason}; use --device auto or cpu, or 8-bit codes")


def _train_sample(vectors: np.ndarray, seed: int) -> np.ndarray:
    if len(vectors) <= MAX_TRAIN:
        return vectors
    rng = np.random.default_rng(seed)
    return vectors[np.sort(rng.choice(len(vectors), MAX_TRAIN, replace=False))]


def locality_order(vectors: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A permutation of the rows that groups them by spherical k-means cluster (stable within one):
    new row ``i`` is old row ``order[i]``."""
    import faiss

    n, dim = vectors.shape
    k = max(1, min(2048, n // LOCALITY_ROWS_PER_CLUSTER))
    km = faiss.Kmeans(dim, k, niter=10, seed=seed, spherical=True)
    km.train(_train_sample(vectors, seed))
    _, cluster = km.index.search(vectors, 1)
    return np.argsort(cluster[:, 0], kind="stable")


def store_in_locality_order(index: Any, vectors: np.ndarray, *, seed: int = 0) -> np.ndarray | None:
    """Permute an HNSW index's rows (codes and graph) into ``locality_order``; returns the order, which
    the caller applies to the id map, or None (not a graph over flat codes, or fewer rows than
    ``LOCALITY_MIN_ROWS``). The graph's links are renumbered, not rebuilt: search results are the same."""
    import faiss

    top = faiss.downcast_index(index)
    if not isinstance(top, faiss.IndexHNSW) or top.ntotal < LOCALITY_MIN_ROWS:
        return None
    order = locality_order(vectors, seed=seed)
    try:
        top.permute_entries(np.ascontiguousarray(order, dtype=np.int64))
    except RuntimeError as exc:  # a storage faiss cannot permute: serve the graph as built
        log.warning("graph rows left in build order (%s)", str(exc).strip().splitlines()[-1])
        return None
    return order


def _gpu_train_add(
    base: Any, sample: np.ndarray, vectors: np.ndarray, labels: np.ndarray, timings: dict[str, float]
) -> Any:
    """Train and fill the (pre-transform +) IVF part on GPU 0; returns it in CPU form."""
    import faiss

    res = faiss.StandardGpuResources()
    co = faiss.GpuClonerOptions()
    co.useFloat16 = True  # IVF-PQ lookup tables in fp16: needed for m=48 within shared memory
    gpu = faiss.index_cpu_to_gpu(res, 0, base, co)
    t0 = time.perf_counter()
    gpu.train(sample)
    t1 = time.perf_counter()
    gpu.add_with_ids(vectors, labels)
    cpu = faiss.index_gpu_to_cpu(gpu)  # the copy back is part of the add: the bundle stores the CPU form
    timings["train_s"], timings["add_s"] = t1 - t0, time.perf_counter() - t1
    return cpu


def train_and_add(
    factory: str, vectors: np.ndarray, *, seed: int = 0, use_gpu: bool | None = None,
    timings: dict[str, float] | None = None, progress: bool = True,
) -> tuple[Any, str]:
    """A trained index holding ``vectors`` as labels 0..n-1, and where it was built ("gpu"/"cpu").

    With faiss GPU (``use_gpu`` None = auto) the IVF part is trained and filled on GPU 0 and copied
    back; the refine store is a plain copy, built on CPU. In auto mode a GPU failure falls back to CPU
    with a warning; with ``use_gpu=True`` it is an error. The result is always CPU-resident.
    ``timings`` (optional) receives ``train_s`` and ``add_s`` (wall seconds, refine store included).
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    index = new_index(factory, dim)
    top, base, store = _parts(index)
    _no_polysemous(base)
    sample = _train_sample(vectors, seed)
    labels = np.arange(n, dtype=np.int64)
    if use_gpu and gpu_count() == 0:
        raise CropsError(ErrorKind.BACKEND, "use_gpu requested but faiss sees no GPU (faiss-cpu installed?)")
    ivf = faiss.try_extract_index_ivf(base)
    if use_gpu:
        require_gpu_buildable(factory, dim)
    unsupported = _ivf_gpu_unsupported(ivf, factory) if use_gpu is not False else None
    if unsupported and gpu_count() > 0:
        log.info("%s: building on the CPU", unsupported)
    if ivf is not None and use_gpu is not False and not unsupported and gpu_count() > 0:
        try:
            # Seed faiss' k-means so GPU and CPU builds are reproducible run to run.
            ivf.cp.seed = seed
            t = timings if timings is not None else {}
            new_base = _gpu_train_add(base, sample, vectors, labels, t)
            if store is None:
                return new_base, "gpu"
            t0 = time.perf_counter()
            store.train(sample)
            t1 = time.perf_counter()
            store.add(vectors)
            t["train_s"] += t1 - t0
            t["add_s"] += time.perf_counter() - t1
            out = faiss.IndexRefine(new_base, store)
            out.k_factor = top.k_factor
            out.own_fields = False  # python references keep new_base/store alive
            out.referenced_objects = [new_base, store, index]  # type: ignore[attr-defined]
            return out, "gpu"
        except Exception as exc:  # GPU clone not supported for this layout, out of memory, ...
            if use_gpu:  # asked for explicitly: a silent CPU build would misreport where it ran
                raise CropsError(ErrorKind.BACKEND, f"faiss GPU build failed: {exc}") from exc
            log.warning("faiss GPU build failed (%s); building on CPU", exc)
            index = new_index(factory, dim)
            top, base, store = _parts(index)
            _no_polysemous(base)
    fresh_ivf = faiss.try_extract_index_ivf(base)  # the fresh index after a GPU fallback
    if fresh_ivf is not None:
        fresh_ivf.cp.seed = seed
    t0 = time.perf_counter()
    index.train(sample)
    t1 = time.perf_counter()
    add_rows(index, vectors, start=0, progress=progress)
    if timings is not None:
        timings["train_s"], timings["add_s"] = t1 - t0, time.perf_counter() - t1
    return index, "cpu"


def add_rows(index: Any, vectors: np.ndarray, *, start: int, progress: bool = True) -> None:
    """Append ``vectors`` as labels ``start ..``; ``start`` must equal ``index.ntotal``. ``progress``:
    a bar when the rows take more than one :data:`ADD_CHUNK`."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if int(index.ntotal) != start:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"index holds {index.ntotal} rows, id map {start}")
    top, base, store = _parts(index)
    if not base.is_trained:
        raise CropsError(ErrorKind.BUNDLE_INVALID, "index is not trained")
    ivf = faiss.try_extract_index_ivf(base) is not None
    with tqdm(total=len(vectors), desc="adding to the index", unit="row", unit_scale=True,
              disable=not progress or len(vectors) <= ADD_CHUNK) as bar:
        for lo in range(0, len(vectors), ADD_CHUNK):
            part = vectors[lo : lo + ADD_CHUNK]
            if ivf:
                base.add_with_ids(part, np.arange(start + lo, start + lo + len(part), dtype=np.int64))
            else:
                base.add(part)  # flat/HNSW: positions are the labels
            if store is not None:
                store.add(part)
            bar.update(len(part))
    if store is not None:
        top.ntotal = int(base.ntotal)
    if int(index.ntotal) != start + len(vectors):
        raise CropsError(ErrorKind.BACKEND, "index row count out of step after add")


def _renumber_ivf(ivf: Any, remap: np.ndarray) -> None:
    """Rewrite every label in the inverted lists through ``remap`` (old label → new label)."""
    import faiss

    inv = ivf.invlists
    for lst in range(ivf.nlist):
        size = inv.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(inv.get_ids(lst), size)  # a writable view of the list's labels
            ids[:] = remap[ids]


def remove_rows(index: Any, rows: np.ndarray) -> int:
    """Remove ``rows`` (labels) and renumber the survivors to ``0 .. ntotal-1``; returns rows removed."""
    import faiss

    total = int(index.ntotal)
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if len(rows) == 0:
        return 0
    if rows[0] < 0 or rows[-1] >= total:
        raise CropsError(ErrorKind.INVALID_INPUT, f"row out of range 0..{total - 1}")
    keep = np.ones(total, dtype=bool)
    keep[rows] = False
    remap = np.cumsum(keep, dtype=np.int64) - 1
    top, base, store = _parts(index)
    sel = faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows))
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        ivf.make_direct_map(False)  # drop any direct map: it would go stale with the renumbering
        ivf.remove_ids(sel)
        _renumber_ivf(ivf, remap)
        if isinstance(base, faiss.IndexPreTransform):
            base.ntotal = int(ivf.ntotal)  # the wrapper keeps its own counter
    elif isinstance(base, faiss.IndexFlatCodes):
        base.remove_ids(sel)  # compacts: survivors shift down, i.e. the same renumbering
    else:
        raise CropsError(
            ErrorKind.INVALID_INPUT,
            f"index type {type(base).__name__} does not support removal; rebuild the index",
        )
    if store is not None:
        store.remove_ids(sel)
        top.ntotal = int(store.ntotal)
    if int(index.ntotal) != total - len(rows):
        raise CropsError(ErrorKind.BACKEND, "index row count out of step after removal")
    return len(rows)
