"""Tune search parameters (IVF nprobe, refine k_factor, HNSW efSearch) to a recall target; the
latency/recall curve.

Every grid point gets recall@k vs exact search on held-out queries and its latency at batch 1
(per query, median and p99) and batch 32 (per batch), single-threaded: one search thread per
worker process is how the service runs on small boxes (docs/explanation/architecture.md, "Process
model"). The chosen point is the fastest at batch 1 whose recall reaches the target; if none does,
the most accurate one. The grid steps by 1.3-2x, so the effort between the chosen point and the
grid point below it is then bisected (:func:`narrow`): the least effort that still reaches the target.

"Reaches the target" means the one-sided 95 % lower confidence bound of the mean recall over the
tuning queries does (:func:`reaches`): the recall is a mean over a sample of queries, and the figure
must hold on the queries the index will serve, which the tuner has not seen.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_bytes, atomic_write_json
from core.search_params import hnsw_of, ivf_of, refine_of, set_search_params
from index_builder.faiss_utils import recall_with_error

NPROBE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Up to 64: on 1M real-MiniLM-derived vectors PQ48 + k_factor 16 saturated at recall@100 0.94.
K_FACTOR_GRID = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# HNSW: faiss searches with max(efSearch, k), so for top-100 the grid starts at 100. Up to 4096: on
# the 1M bench vectors with real queries HNSW32,SQ8 needed ~2000 for recall@100 0.95.
EF_SEARCH_GRID = (16, 32, 64, 100, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096)
MAX_B1_MS = 50.0  # stop raising nprobe past an interactive per-query budget
# Bisection stops when the bracket is within 1/32 of the effort (3-4 more points per build).
NARROW_TO = 1 / 32
# A point reaches the target when mean recall - Z_LOWER x its standard error does (one-sided 95 %).
# Without it, the bisection lands on the tuning sample's exact crossing, and on queries it has not
# seen the recall then falls below the target about half the time.
Z_LOWER = 1.645


@dataclass
class CurvePoint:
    nprobe: int | None
    k_factor: float | None
    recall: float
    b1_ms_p50: float
    b1_ms_p99: float
    b32_ms: float
    ef_search: int | None = None
    recall_se: float = 0.0  # standard error of the mean recall over the tuning queries

    @property
    def b32_ms_per_query(self) -> float:
        return self.b32_ms / 32


def lower_bound(recall: float, se: float) -> float:
    """The one-sided 95 % lower confidence bound of a mean recall with standard error ``se``."""
    return recall - Z_LOWER * se


def tune_goal(target_recall: float, margin: float) -> float:
    """The recall the tuner aims at: the target plus the pseudo-query margin, capped below 1.0 (a
    sampled recall of exactly 1.0 has no lower bound that reaches it). The build and every later
    re-measure judge an index against this one figure."""
    return min(0.9999, target_recall + margin)


def reaches(point: CurvePoint, target: float) -> bool:
    """Whether the point's recall reaches ``target`` with 95 % confidence (one-sided lower bound)."""
    return lower_bound(point.recall, point.recall_se) >= target


def _omp_threads(n: int) -> int:
    import faiss

    before = int(faiss.omp_get_max_threads())
    faiss.omp_set_num_threads(n)
    return before


def measure_point(
    index: Any, queries: np.ndarray, truth: np.ndarray, k: int, *, n_latency: int = 200
) -> tuple[float, float, float, float, float]:
    """(recall@k, its standard error over the queries, batch-1 p50 ms, batch-1 p99 ms, batch-32 ms)
    at the index's current parameters."""
    _, found = index.search(queries, k)
    recall, se = recall_with_error(found, truth)
    lat_q = queries[: min(n_latency, len(queries))]
    index.search(lat_q[:4], k)  # warm caches
    times = []
    for i in range(len(lat_q)):
        t0 = time.perf_counter()
        index.search(lat_q[i : i + 1], k)
        times.append((time.perf_counter() - t0) * 1e3)
    b32 = []
    for s in range(0, max(1, len(lat_q) - 31), 32):
        t0 = time.perf_counter()
        index.search(lat_q[s : s + 32], k)
        b32.append((time.perf_counter() - t0) * 1e3)
    return recall, se, float(np.median(times)), float(np.percentile(times, 99)), float(np.median(b32))


def tune(
    index: Any,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    *,
    k: int = 100,
    threads: int = 1,
    n_latency: int = 100,
    max_b1_ms: float = MAX_B1_MS,
) -> tuple[CurvePoint, list[CurvePoint]]:
    """Walk nprobe or efSearch (per k_factor) up until recall stops improving or reaches the target + margin.

    Returns (chosen point, all measured points); leaves the index set to the chosen point.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ivf = ivf_of(index)
    refine = refine_of(index)
    k_factors: tuple[float | None, ...] = K_FACTOR_GRID if refine is not None else (None,)
    # One search-effort axis per index: nprobe (IVF) or efSearch (HNSW); none for flat.
    efforts: list[tuple[int | None, int | None]] = [(None, None)]
    if ivf is not None:
        efforts = [(p, None) for p in NPROBE_GRID if p <= ivf.nlist]
    elif hnsw_of(index) is not None:
        efforts = [(None, ef) for ef in EF_SEARCH_GRID if ef >= k]
    before = _omp_threads(threads)
    points: list[CurvePoint] = []
    try:
        for kf in k_factors:
            best = -1.0
            stale = 0
            for nprobe, ef in efforts:
                set_search_params(index, nprobe=nprobe, k_factor=kf, ef_search=ef)
                rec, se, p50, p99, b32 = measure_point(index, queries, truth, k, n_latency=n_latency)
                points.append(CurvePoint(nprobe, kf, round(rec, 5), round(p50, 4), round(p99, 4), round(b32, 4), ef,
                                         round(se, 5)))
                # Past the target by a margin, more nprobe only costs time; a flat recall means
                # this k_factor has saturated (the PQ shortlist, not the lists, is the limit).
                if rec >= min(1.0, target + 0.03) or rec >= 0.9999:
                    break
                stale = stale + 1 if rec <= best + 0.002 else 0
                best = max(best, rec)
                if stale >= 2 or p50 > max_b1_ms:
                    break
        ok = [p for p in points if reaches(p, target)]
        chosen = min(ok, key=lambda p: (p.b1_ms_p50, -p.recall)) if ok else max(points, key=lambda p: p.recall)
        if ok:
            chosen = narrow(index, queries, truth, target, chosen, points, k=k, n_latency=n_latency)
    finally:
        _omp_threads(before)
    set_search_params(index, nprobe=chosen.nprobe, k_factor=chosen.k_factor, ef_search=chosen.ef_search)
    return chosen, points


def narrow(
    index: Any,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    chosen: CurvePoint,
    points: list[CurvePoint],
    *,
    k: int = 100,
    n_latency: int = 100,
) -> CurvePoint:
    """Bisect the search effort (nprobe or efSearch, at the chosen k_factor) between the largest grid
    point below ``target`` and ``chosen``; returns the least effort measured to reach the target.

    On the 1M bench vectors with real queries the grid jumped from efSearch 768 (recall 0.949) to 1024
    (0.963): search time grows about linearly with the effort, so the grid alone overpaid by up to 1/3.
    Measured points are appended to ``points`` (the curve shows them).
    """
    axis = "ef_search" if chosen.ef_search is not None else "nprobe" if chosen.nprobe is not None else None
    if axis is None:
        return chosen
    hi = int(getattr(chosen, axis))
    below = [int(getattr(p, axis)) for p in points
             if p.k_factor == chosen.k_factor and not reaches(p, target) and int(getattr(p, axis)) < hi]
    if not below:
        return chosen
    lo, best = max(below), chosen
    while hi - lo > max(1, int(hi * NARROW_TO)):
        mid = (lo + hi) // 2
        effort = {"nprobe": chosen.nprobe, "ef_search": chosen.ef_search, axis: mid}
        set_search_params(index, k_factor=chosen.k_factor, **effort)
        rec, se, p50, p99, b32 = measure_point(index, queries, truth, k, n_latency=n_latency)
        point = CurvePoint(effort["nprobe"], chosen.k_factor, round(rec, 5), round(p50, 4), round(p99, 4),
                           round(b32, 4), effort["ef_search"], round(se, 5))
        points.append(point)
        if reaches(point, target):
            hi, best = mid, point
        else:
            lo = mid
    return best


def write_curve(
    bundle_dir: Path, chosen: CurvePoint, points: list[CurvePoint], meta: dict[str, Any], *, stem: str = "index_curve"
) -> tuple[str, str]:
    """Write ``<stem>.json`` and ``<stem>.png`` (recall vs latency at batch 1 and 32) into the bundle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {**meta, "chosen": asdict(chosen), "points": [asdict(p) for p in points]}
    atomic_write_json(bundle_dir / f"{stem}.json", data)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: dict[float | None, list[CurvePoint]] = {}
    for p in points:
        groups.setdefault(p.k_factor, []).append(p)
    for ax, attr, title in (
        (axes[0], "b1_ms_p50", "batch 1: median ms per query"),
        (axes[1], "b32_ms_per_query", "batch 32: ms per query"),
    ):
        for kf, pts in groups.items():
            xs = [getattr(p, attr) for p in pts]
            ax.plot(xs, [p.recall for p in pts], marker="o", ms=3,
                    label=f"k_factor {kf:g}" if kf is not None else "no refine")
            for p, x in zip(pts, xs, strict=True):
                effort = p.nprobe if p.nprobe is not None else p.ef_search
                if effort is not None:
                    ax.annotate(str(effort), (x, p.recall), fontsize=6, alpha=0.7)
        ax.scatter([getattr(chosen, attr)], [chosen.recall], s=90, facecolors="none", edgecolors="red",
                   label="chosen", zorder=5)
        ax.axhline(meta.get("target_recall", 0.95), color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel(f"recall@{meta.get('k', 100)} vs exact")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{meta.get('factory')}  n={meta.get('ntotal')}  ({meta.get('queries')} held-out queries; "
                 f"labels = {'efSearch' if chosen.ef_search is not None else 'nprobe'})", fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(bundle_dir / f"{stem}.png", buf.getvalue())
    return f"{stem}.json", f"{stem}.png"
