"""Does storing a graph index's rows in cluster order make its search faster? Side by side on 1M.

Three ``HNSW32,SQ8`` indexes over the 1M bench vectors (``runs/realq/vectors_1000000.npy``, from
``benchmarks.index_memory``), each built by the builder's ``train_and_add`` (at
``index_builder.ops.HNSW_EF_CONSTRUCTION``; the published report's graphs were built at 160):

- ``own order``: the rows as they come;
- ``inserted in cluster order``: the rows reordered by ``index_builder.ops.locality_order`` before the
  build (the graph is built in that insertion order);
- ``permuted to cluster order``: the own-order graph, its codes and links renumbered into the same
  order after the build (``IndexHNSW.permute_entries``; what ``build_from_vectors`` does for graphs).

Pinned to one core with one faiss thread, each answers the same held-out MIMICS queries (int8 query
tower, batch 1) at each efSearch, the indexes alternating over ``--rounds`` rounds so drift on a
shared box falls on all alike. Recall@100 is against exact search in the original row numbering
(the reordered indexes' labels are mapped back through the permutation).

    python -m benchmarks.graph_order          # -> docs/results/graph_order_1M.{md,json}

Built indexes are kept under ``runs/realq/graph_order/`` and reused.
"""

from __future__ import annotations

import argparse
import json
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
    order_file, order_meta = WORK / "graph_order" / "order.npy", WORK / "graph_order" / "order.json"
    if order_file.is_file() and order_meta.is_file():  # reused, with the time it took when computed
        order, order_s = np.load(order_file), float(json.loads(order_meta.read_text())["order_s"])
    else:
        t0 = time.perf_counter()
        order = ops.locality_order(vectors, seed=0)
        order_s = time.perf_counter() - t0
        order_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(order_file, order)
        atomic_write_json(order_meta, {"order_s": round(order_s, 1)})
    h.log(f"order: {order_s:.1f} s")
    natural, natural_s = _build(vectors, WORK / "graph_order" / "natural.faiss", None)
    h.log(f"own order built ({natural_s} s)")
    inserted, inserted_s = _build(vectors, WORK / "graph_order" / "clustered.faiss", order)
    h.log(f"cluster-order insertion built ({inserted_s} s)")
    permuted = faiss.deserialize_index(faiss.serialize_index(natural))
    faiss.downcast_index(permuted).permute_entries(np.ascontiguousarray(order, dtype=np.int64))

    enc = OnnxEncoder(a.model / "query_encoder.int8.onnx", a.model / "tokenizer.json", 64)
    held = split[1][: a.queries]
    queries = enc.encode([normalize_text(q) for q in held], normalized=True)
    truth = exact_topk(vectors, queries, 100)
    del vectors
    os.sched_setaffinity(0, {1})
    faiss.omp_set_num_threads(1)
    indexes = {"own order": (natural, None), "inserted in cluster order": (inserted, order),
               "permuted to cluster order": (permuted, order)}
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
        own = statistics.median(r["p50_ms"] for r in runs["own order"][ef])
        for name in indexes:
            rs = runs[name][ef]
            p50 = statistics.median(r["p50_ms"] for r in rs)
            rows_out.append({"ef_search": ef, "index": name, "recall": round(rs[0]["recall"], 4),
                             "p50_ms": round(p50, 3), "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 3),
                             "p50_each_round": [round(r["p50_ms"], 3) for r in rs], "speedup": round(own / p50, 3)})
    result = {"factory": FACTORY, "ntotal": int(natural.ntotal), "queries": len(held), "rounds": a.rounds,
              "order_s": round(order_s, 1),
              "build_s": {"own order": natural_s, "inserted in cluster order": inserted_s},  # None: reused
              "machine": h.machine_info(()), "rows": rows_out, "command": "python -m benchmarks.graph_order"}
    atomic_write_json(a.out.with_suffix(".json"), result)
    f = h.fmt
    md = [
        "# A graph index's rows in cluster order: side by side on 1M vectors", "",
        f"{FACTORY} over {result['ntotal']:,} bench vectors, built with the builder's `train_and_add` "
        f"(efConstruction {ops.HNSW_EF_CONSTRUCTION}) in the vectors' own order and with the rows inserted in "
        f"`locality_order` "
        f"(spherical k-means, {result['order_s']:g} s); the third is the own-order graph with its rows permuted "
        f"into that order after the build (`IndexHNSW.permute_entries`, what the builder does). "
        f"{len(held)} held-out MIMICS queries, int8 query tower, batch 1, one faiss "
        f"thread pinned to one core; the indexes alternate, {a.rounds} rounds; ms are the median over rounds "
        f"of each round's p50 / p99. Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"git {result['machine']['git']}.", "",
        *h.markdown_table(
            ["efSearch", "rows", "recall@100", "p50 / p99 ms", "p50 each round", "speed-up vs own order"],
            [[r["ef_search"], r["index"], f(r["recall"], 4), f"{f(r['p50_ms'], 3)} / {f(r['p99_ms'], 3)}",
              ", ".join(f"{x:.2f}" for x in r["p50_each_round"]), f"{f(r['speedup'], 2)}×"] for r in rows_out]),
        "", f"Reproduce: `{result['command']}`", "",
    ]
    atomic_write_bytes(a.out, "\n".join(md).encode())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
