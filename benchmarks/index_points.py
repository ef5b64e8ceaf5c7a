"""Which IVF layout gives the fastest search at recall@100 ≥ 0.95 on the bench's 1M vectors?

For each faiss factory string: build it with the index builder's own code (``ops.train_and_add``),
tune nprobe/k_factor to the target on the tuning queries (``tuning.tune``: the fastest batch-1 point
reaching it), then measure that point on held-out queries: recall@100 vs exact, batch-1 latency
p50/p99 (one thread, as each service worker searches), build time and index size.

    python -m benchmarks.index_points --vectors runs/perf/n1000000/vectors.npy \
        --model runs/perf/model --factories "IVF1024,PQ48,RFlat;IVF1024,PQ48x4fs,RFlat"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import RUNS
from benchmarks.vectors import encode, tuning_texts
from core.search_params import set_search_params
from index_builder.faiss_utils import estimate_bytes, exact_topk
from index_builder.ops import train_and_add
from index_builder.tuning import measure_point, tune
from loadtest.querymix import load_mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=Path, required=True, help=".npy of the indexed vectors")
    ap.add_argument("--model", type=Path, required=True, help="bundle whose query tower encodes the queries")
    ap.add_argument("--factories", default="IVF1024,PQ48,RFlat;IVF1024,PQ48x4fs,RFlat;IVF4096,PQ48x4fs,RFlat")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--out", type=Path, default=RUNS / "index_points.json")
    a = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(2)  # builds use both cores; searches are timed on one thread below
    mix = load_mix(None)
    tune_texts = tuning_texts(mix.queries)  # the same split as benchmarks.fleet
    held = [q for q in dict.fromkeys(mix.queries[0::2]) if q not in set(tune_texts)][:300]
    vecs = np.load(a.vectors, mmap_mode="r")
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    tq, hq = encode(a.model, tune_texts), encode(a.model, held)
    t_truth, h_truth = exact_topk(vecs, tq, 100), exact_topk(vecs, hq, 100)
    rows = json.loads(a.out.read_text()) if a.out.is_file() else {}
    for factory in [f.strip() for f in a.factories.split(";") if f.strip()]:
        if factory in rows:
            print(f"{factory}: cached", rows[factory], flush=True)
            continue
        t0 = time.perf_counter()
        index, _where = train_and_add(factory, vecs, use_gpu=False)
        build_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        chosen, _curve = tune(index, tq, t_truth, a.target, n_latency=100)
        set_search_params(index, nprobe=chosen.nprobe, k_factor=chosen.k_factor)
        recall, _, p50, p99, b32 = measure_point(index, hq, h_truth, 100, n_latency=300)
        faiss.omp_set_num_threads(2)
        rows[factory] = {
            "nprobe": chosen.nprobe, "k_factor": chosen.k_factor, "tune_recall": round(chosen.recall, 4),
            "recall_at_100": round(recall, 4), "b1_ms_p50": round(p50, 3), "b1_ms_p99": round(p99, 3),
            "b32_ms": round(b32, 2), "build_s": round(build_s, 1), "bytes": estimate_bytes(index),
        }
        print(f"{factory}:", rows[factory], flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=2))  # after each factory: a rerun resumes
        del index
    print("| factory | nprobe | k_factor | recall@100 (held-out) | batch-1 p50 / p99 ms | build s | size GB |")
    print("|---|---|---|---|---|---|---|")
    for f, r in rows.items():
        print(f"| {f} | {r['nprobe']} | {r['k_factor']} | {r['recall_at_100']:.3f} | "
              f"{r['b1_ms_p50']:.2f} / {r['b1_ms_p99']:.2f} | {r['build_s']:.0f} | {r['bytes'] / 1e9:.2f} |")


if __name__ == "__main__":
    main()
