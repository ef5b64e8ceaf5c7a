"""Does storing a graph index's rows in cluster order make its search faster? Side by side on 1M.

Builds ``HNSW32,SQ8`` (the builder's ``train_and_add``, efConstruction 160) twice over the 1M bench
vectors (``runs/realq/vectors_1000000.npy``, from ``benchmarks.index_memory``): once in the vectors'
own order, once in ``index_builder.ops.locality_order`` (what ``build_from_vectors`` does for graphs).
Then, pinned to one core with one faiss thread, it answers the same held-out MIMICS queries (int8
query tower, batch 1) on both at each efSearch, alternating the two indexes over ``--rounds`` rounds
so drift on a shared box falls on both alike. Recall@100 is against exact search in the original
row numbering (the clustered index's labels are mapped back through the permutation).

    python -m benchmarks.graph_order          # -> docs/results/graph_order_1M.{md,json}

Built indexes are kept under ``runs/realq/graph_order/`` and reused.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as h
from benchmarks.vectors import real_query_split
from core.atomic import atomic_write_bytes, atomic_write_json

WORK = h.ROOT / "runs" / "realq"
FACTORY = "HNSW32,SQ8"


def _build(vectors: np.ndarray, path: Path, order: np.ndarray | None) -> tuple[Any, float | None]:
    import faiss

    from index_builder import ops

    if path.is_file():
        return faiss.read_index(str(path)), None
    t0 = time.perf_counter()
    index, _ = ops.train_and_add(FACTORY, vectors if order is None else vectors[order], seed=0, use_gpu=False)
    took = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, faiss.serialize_index(index).tobytes())
    return index, took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=Path, default=WORK / "vectors_1000000.npy")
    ap.add_argument("--model", type=Path, default=WORK / "model", help="bundle with the int8 query tower")
    ap.add_argument("--ef", default="512,768,1024")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--out", type=Path, default=h.ROOT / "docs" / "results" / "graph_order_1M.md")
    a = ap.parse_args(argv)
    if not a.vectors.is_file():
        print(f"error: {a.vectors} is missing: run python -m benchmarks.index_memory first", file=sys.stderr)
        return 2
    import faiss

    from core.normalize import normalize_text
    from core.onnx_encoder import OnnxEncoder
    from index_builder import ops
    from index_builder.faiss_utils import exact_topk, recall_vs_exact

    split = real_query_split()
    if split is None:
        print("error: the MIMICS-Manual queries are missing", file=sys.stderr)
        return 2
    vectors = np.ascontiguousarray(np.load(a.vectors), dtype=np.float32)
    faiss.omp_set_num_threads(2)
    t0 = time.perf_counter()
    order_file = WORK / "graph_order" / "order.npy"
    if order_file.is_file():
        order = np.load(order_file)
    else:
        order = ops.locality_order(vectors, seed=0)
        order_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(order_file, order)
    order_s = time.perf_counter() - t0
    h.log(f"order: {order_s:.1f} s")
    natural, natural_s = _build(vectors, WORK / "graph_order" / "natural.faiss", None)
    h.log(f"own order built ({natural_s} s)")
    clustered, clustered_s = _build(vectors, WORK / "graph_order" / "clustered.faiss", order)
    h.log(f"cluster order built ({clustered_s} s)")

    enc = OnnxEncoder(a.model / "query_encoder.int8.onnx", a.model / "tokenizer.json", 64)
    held = split[1][: a.queries]
    queries = enc.encode([normalize_text(q) for q in held], normalized=True)
    truth = exact_topk(vectors, queries, 100)
    del vectors
    os.sched_setaffinity(0, {1})
    faiss.omp_set_num_threads(1)
    indexes = {"natural": (natural, None), "clustered": (clustered, order)}
    efs = [int(x) for x in a.ef.split(",")]
    runs: dict[str, dict[int, list[dict[str, float]]]] = {n: {ef: [] for ef in efs} for n in indexes}
    for rnd in range(a.rounds):
        for ef in efs:
            for name, (index, perm) in indexes.items():
                faiss.ParameterSpace().set_index_parameter(index, "efSearch", ef)
                lat, found = [], []
                for q in queries:
                    t = time.perf_counter()
                    _, rows = index.search(q[None], 100)
                    lat.append((time.perf_counter() - t) * 1e3)
                    found.append(rows[0] if perm is None else perm[rows[0]])
                runs[name][ef].append({"recall": recall_vs_exact(np.array(found), truth),
                                       "p50_ms": float(np.median(lat)), "p99_ms": float(np.percentile(lat, 99))})
        h.log(f"round {rnd + 1}/{a.rounds} done")
    rows_out: list[dict[str, Any]] = []
    for ef in efs:
        nat, clu = runs["natural"][ef], runs["clustered"][ef]
        n50, c50 = statistics.median(r["p50_ms"] for r in nat), statistics.median(r["p50_ms"] for r in clu)
        rows_out.append({"ef_search": ef, "recall_natural": round(nat[0]["recall"], 4),
                         "recall_clustered": round(clu[0]["recall"], 4),
                         "p50_natural_ms": round(n50, 3), "p50_clustered_ms": round(c50, 3),
                         "p99_natural_ms": round(statistics.median(r["p99_ms"] for r in nat), 3),
                         "p99_clustered_ms": round(statistics.median(r["p99_ms"] for r in clu), 3),
                         "p50_each_round_natural": [round(r["p50_ms"], 3) for r in nat],
                         "p50_each_round_clustered": [round(r["p50_ms"], 3) for r in clu],
                         "speedup": round(n50 / c50, 3)})
    result = {"factory": FACTORY, "ntotal": int(natural.ntotal), "queries": len(held), "rounds": a.rounds,
              "order_s": round(order_s, 1),
              "build_s": {"natural": natural_s, "clustered": clustered_s},  # None: reused from an earlier run
              "machine": h.machine_info(()), "rows": rows_out, "command": "python -m benchmarks.graph_order"}
    atomic_write_json(a.out.with_suffix(".json"), result)
    f = h.fmt
    md = [
        "# A graph index's rows in cluster order: side by side on 1M vectors", "",
        f"{FACTORY} over {result['ntotal']:,} bench vectors, built twice with the builder's `train_and_add` "
        f"(efConstruction 160): in the vectors' own order and in `locality_order` (spherical k-means, "
        f"{result['order_s']:g} s). {len(held)} held-out MIMICS queries, int8 query tower, batch 1, one faiss "
        f"thread pinned to one core; the two indexes alternate, {a.rounds} rounds; ms are the median over rounds "
        f"of each round's p50 / p99. Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"git {result['machine']['git']}.", "",
        *h.markdown_table(
            ["efSearch", "recall@100 own order", "recall@100 cluster order", "p50 / p99 ms own order",
             "p50 / p99 ms cluster order", "p50 each round (own → cluster)", "speed-up"],
            [[r["ef_search"], f(r["recall_natural"], 4), f(r["recall_clustered"], 4),
              f"{f(r['p50_natural_ms'], 3)} / {f(r['p99_natural_ms'], 3)}",
              f"{f(r['p50_clustered_ms'], 3)} / {f(r['p99_clustered_ms'], 3)}",
              ", ".join(f"{x:.2f}→{y:.2f}" for x, y in zip(r["p50_each_round_natural"],
                                                             r["p50_each_round_clustered"], strict=True)),
              f"{f(r['speedup'], 2)}×"] for r in rows_out]),
        "", f"Reproduce: `{result['command']}`", "",
    ]
    atomic_write_bytes(a.out, "\n".join(md).encode())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
