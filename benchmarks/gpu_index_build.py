"""1M-vector IVF-PQ build on the GPU vs the CPU: train/add seconds and recall@100 vs exact search.

Both builds go through the index builder's own ``index_builder.ops.train_and_add`` with the default
factory for ``--n`` vectors (``production_factory``, what ``crops index build`` picks at that size),
over the same vectors. The search point (nprobe, k_factor) is tuned once, on the first build, to
the builder's default target on tuning queries; both indexes are then measured at that point and
a few neighbouring nprobes on disjoint held-out queries, against exact search.

Needs only numpy, faiss (``faiss-cpu``, or ``faiss-gpu`` which provides the same module) and
this repository; no network, no model. Vectors: ``--vectors FILE.npy`` (float32 rows; expanded to
``--n`` by clustered perturbation when it has fewer rows), else generated (a topic mixture on the
unit sphere, expanded the same way). Queries: ``--queries FILE.npy``, else held-out perturbations
of catalog rows that are not indexed.

    python -m benchmarks.gpu_index_build --device both --n 1000000 --out gpu_index_build.json
    python -m benchmarks.gpu_index_build --device cpu --n 20000      # the CPU path, for development
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.vectors import expand

ROOT = Path(__file__).resolve().parents[1]

from core.atomic import atomic_write_json  # noqa: E402
from core.search_params import ivf_of, set_search_params  # noqa: E402
from index_builder import ops  # noqa: E402
from index_builder.faiss_utils import exact_topk, gpu_count, production_factory, recall_vs_exact  # noqa: E402
from index_builder.tuning import tune  # noqa: E402

DIM = 384  # all-MiniLM-L6-v2, the default bundle's embedding size


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def generated_base(n_base: int, dim: int, seed: int) -> np.ndarray:
    """A topic mixture on the unit sphere: 1 000 topic directions, each row one of them plus noise
    in a shared 64-d subspace (sentence embeddings vary along few directions) and a little
    isotropic noise; cosine to the topic ≈ 0.8."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((1000, dim)).astype(np.float32))
    basis = np.linalg.qr(rng.standard_normal((dim, 64)))[0].T.astype(np.float32)  # 64 orthonormal rows
    pick = rng.integers(0, len(topics), n_base)
    noise = rng.standard_normal((n_base, 64)).astype(np.float32) @ basis * (0.7 / 8)
    noise += rng.standard_normal((n_base, dim)).astype(np.float32) * (0.2 / np.sqrt(dim))
    return _unit(topics[pick] + noise)


def held_out_queries(base: np.ndarray, n_q: int, seed: int) -> np.ndarray:
    """Queries near the catalog but not in it: a catalog row plus noise (cosine to the row ≈ 0.9)."""
    rng = np.random.default_rng(seed + 1)
    rows = base[rng.integers(0, len(base), n_q)]
    return _unit(rows + rng.standard_normal(rows.shape).astype(np.float32) * (0.5 / np.sqrt(base.shape[1])))


def build(factory: str, vectors: np.ndarray, device: str, seed: int) -> tuple[Any, dict[str, Any]]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    index, built_on = ops.train_and_add(factory, vectors, seed=seed, use_gpu=device == "cuda", timings=timings)
    row = {"built_on": built_on, "train_s": round(timings["train_s"], 4), "add_s": round(timings["add_s"], 4),
           "total_s": round(time.perf_counter() - t0, 2)}
    print(f"{device}: built on {built_on}: train {row['train_s']} s, add {row['add_s']} s, "
          f"total {row['total_s']} s", flush=True)
    return index, row


def recall_at(index: Any, queries: np.ndarray, truth: np.ndarray, nprobe: int | None, k_factor: float | None) -> float:
    set_search_params(index, nprobe=nprobe, k_factor=k_factor)
    _, found = index.search(queries, 100)
    return round(recall_vs_exact(found, truth), 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("both", "cuda", "cpu"), default="both")
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors to index")
    ap.add_argument("--vectors", type=Path, help="float32 .npy rows (expanded to --n when fewer)")
    ap.add_argument("--queries", type=Path, help="float32 .npy query rows (default: held-out generated)")
    ap.add_argument("--n-queries", type=int, default=1000, help="generated queries: half tune, half report")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--factory", help="faiss factory (default: the builder's default for --n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_index_build.json")
    a = ap.parse_args(argv)
    import faiss

    devices = ["cuda", "cpu"] if a.device == "both" else [a.device]
    if "cuda" in devices and gpu_count() == 0:
        print("error: --device cuda needs faiss with GPU support (faiss-gpu) and a visible GPU; "
              f"this faiss {faiss.__version__} sees none", file=sys.stderr)
        return 2
    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    if a.vectors is not None:
        base = np.load(a.vectors).astype(np.float32)
        source = f"{a.vectors} ({len(base)} rows)"
    else:
        base = generated_base(min(a.n, 30_000), DIM, a.seed)
        source = f"generated topic mixture ({len(base)} rows)"
    vectors = expand(_unit(base.copy()), a.n, seed=a.seed)
    if a.queries is not None:
        queries = _unit(np.load(a.queries).astype(np.float32))
        qsource = str(a.queries)
    else:
        queries = held_out_queries(base, a.n_queries, a.seed)
        qsource = "generated: catalog rows + noise, cosine ~0.9 to the row (not indexed)"
    rng = np.random.default_rng(a.seed + 2)
    perm = rng.permutation(len(queries))
    tune_q, report_q = queries[perm[: len(perm) // 2]], queries[perm[len(perm) // 2 :]]
    n, dim = vectors.shape
    factory = a.factory or production_factory(n, dim)
    print(f"{n} x {dim} vectors ({source}, expanded in {time.perf_counter() - t0:.1f} s); {factory}; "
          f"{len(tune_q)} tuning + {len(report_q)} report queries; {threads} threads", flush=True)
    t0 = time.perf_counter()
    truth_tune = exact_topk(vectors, tune_q, 100)
    truth_report = exact_topk(vectors, report_q, 100)
    print(f"exact top-100 in {time.perf_counter() - t0:.1f} s", flush=True)

    result: dict[str, Any] = {
        "n": n, "dim": dim, "factory": factory, "vectors": source, "queries": qsource,
        "tune_queries": len(tune_q), "report_queries": len(report_q), "target_recall": a.target_recall,
        "faiss": faiss.__version__, "gpus": gpu_count(), "cpu_threads": threads, "machine": platform.node(),
        "python": platform.python_version(), "builds": {},
    }
    point: tuple[int | None, float | None] | None = None
    for device in devices:
        index, row = build(factory, vectors, device, a.seed)
        if point is None:
            t0 = time.perf_counter()
            chosen, _ = tune(index, tune_q, truth_tune, a.target_recall, threads=threads, n_latency=20)
            point = (chosen.nprobe, chosen.k_factor)
            result["tuned_on"] = device
            result["nprobe"], result["k_factor"] = point
            print(f"tuned on the {device} build: nprobe {point[0]}, k_factor {point[1]} "
                  f"(tuning recall {chosen.recall:.4f}; {time.perf_counter() - t0:.0f} s)", flush=True)
        row["recall_at_100"] = recall_at(index, report_q, truth_report, *point)
        ivf = ivf_of(index)
        curve = {}
        for p in (8, 16, 32, 64, 128):
            if point[0] is not None and ivf is not None and p <= ivf.nlist:
                curve[str(p)] = recall_at(index, report_q, truth_report, p, point[1])
        row["recall_by_nprobe"] = curve
        print(f"{device}: recall@100 vs exact on {len(report_q)} held-out queries {row['recall_at_100']} "
              f"at nprobe {point[0]} / k_factor {point[1]}; by nprobe {curve}", flush=True)
        result["builds"][device] = row
        del index
    if {"cuda", "cpu"} <= set(result["builds"]):
        g, c = result["builds"]["cuda"], result["builds"]["cpu"]
        result["speedup_train_add"] = round((c["train_s"] + c["add_s"]) / max(1e-9, g["train_s"] + g["add_s"]), 2)
        result["recall_delta_gpu_minus_cpu"] = round(g["recall_at_100"] - c["recall_at_100"], 4)
        print(f"GPU train+add {result['speedup_train_add']}x faster than CPU; recall delta "
              f"{result['recall_delta_gpu_minus_cpu']:+.4f}", flush=True)
    atomic_write_json(a.out, result)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
