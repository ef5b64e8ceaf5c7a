"""HNSW graphs built with different effort (efConstruction), searched side by side on 1M.

    python -m benchmarks.graph_build_effort --bundles A,B   # -> docs/results/graph_build_effort_1M.{md,json}

Each bundle holds an ``HNSW32,SQ8`` graph over the same 1M bench vectors, built by
``benchmarks.index_memory`` (``--ef-construction N`` names its bundle ``..._efcN``). The held-out MIMICS
queries are encoded once (int8 query tower, as ``benchmarks.vectors.measured_recall`` does); each
graph answers all of them at batch 1 with one faiss thread, this process pinned to one core, at every
efSearch of a shared grid and at its own tuned efSearch (the manifest's). The graphs search in passes
of their own, alternating which goes first over ``--rounds`` rounds, so drift on a shared box falls on
both alike and no graph is timed right after another searched the same query. Recall@100 is against
exact search over the bench vectors. The question it answers: how much search time a better-built
graph saves at the same recall.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as h
from benchmarks.vectors import bench_row, encode, real_query_split

WORK = h.ROOT / "runs" / "realq"
GRID = (512, 640, 768, 896, 1024)


def level0_degree(hnsw: Any) -> float:
    """Mean number of links per node on the graph's bottom layer (unused slots hold -1)."""
    import faiss

    neighbors = faiss.vector_to_array(hnsw.neighbors)
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    width = int(hnsw.nb_neighbors(0))
    level0 = neighbors[offsets[:-1, None] + np.arange(width)]
    return round(float((level0 >= 0).sum(axis=1).mean()), 2)


def main(argv: list[str] | None = None) -> int:
    import faiss

    from core.manifest import load_id_map, verify_bundle
    from core.search_params import apply_manifest_params, hnsw_of
    from index_builder.faiss_utils import exact_topk

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", default=f"{WORK / 'bundle_HNSW32_SQ8_efc160'},{WORK / 'bundle_HNSW32_SQ8_efc400'}",
                    help="graph bundles over the same vectors, comma-separated")
    ap.add_argument("--vectors", type=Path, default=WORK / "vectors_1000000.npy")
    ap.add_argument("--rounds", type=int, default=4, help="passes per graph, alternating which goes first")
    ap.add_argument("--cpu", type=int, default=0, help="the core this process is pinned to")
    ap.add_argument("--out", type=Path, default=h.ROOT / "docs" / "results" / "graph_build_effort_1M.md")
    a = ap.parse_args(argv)
    bundles = [Path(b) for b in a.bundles.split(",") if b.strip()]
    split = real_query_split()
    if len(bundles) < 2 or a.rounds < 1:
        raise SystemExit("error: --bundles needs two or more bundles, --rounds at least 1")
    if split is None or not a.vectors.is_file() or not all(b.is_dir() for b in bundles):
        raise SystemExit("error: needs the public data, the bundles and their vectors "
                         "(python -m benchmarks.index_memory --n 1000000 [--ef-construction N] builds them)")
    _, held_out, _ = split
    os.sched_setaffinity(0, {a.cpu})
    faiss.omp_set_num_threads(1)
    graphs: list[dict[str, Any]] = []
    for b in bundles:
        man = verify_bundle(b, require_index=True, check_checksums=False)
        assert man.index is not None
        index = faiss.read_index(str(b / man.index.index_file))
        apply_manifest_params(index, man.index)  # the unbounded candidate heap, as served
        hnsw = hnsw_of(index)
        if hnsw is None:
            raise SystemExit(f"error: {b} holds no HNSW index")
        rows_of = np.array([bench_row(i) for i in load_id_map(b / man.index.id_map_file)])
        graphs.append({"bundle": b, "index": index, "hnsw": hnsw, "rows_of": rows_of, "tuned": man.index.ef_search,
                       "ef_construction": int(hnsw.efConstruction), "build_s": man.index.build_seconds,
                       "degree": level0_degree(hnsw)})
    q = encode(bundles[0], held_out)
    h.log(f"exact top-100 of {len(q)} queries over {a.vectors}")
    exact = exact_topk(np.load(a.vectors), q, 100)
    stats: Any = faiss.cvar.hnsw_stats  # type: ignore[attr-defined]  # faiss' search counters (SWIG global)
    efs = sorted(set(GRID) | {int(g["tuned"]) for g in graphs if g["tuned"]})
    points: list[dict[str, Any]] = []
    for ef in efs:
        ms: list[list[float]] = [[] for _ in graphs]
        hits: list[list[float]] = [[] for _ in graphs]
        ndis: list[float] = [0.0 for _ in graphs]
        for r in range(a.rounds):
            order = list(range(len(graphs))) if r % 2 == 0 else list(reversed(range(len(graphs))))
            for g in order:
                graph = graphs[g]
                graph["hnsw"].efSearch = ef
                stats.reset()
                for i in range(len(q)):
                    t0 = time.perf_counter()
                    _, lab = graph["index"].search(q[i : i + 1], 100)
                    ms[g].append((time.perf_counter() - t0) * 1e3)
                    if r == 0:
                        found = set(graph["rows_of"][lab[0][lab[0] >= 0]])
                        hits[g].append(len(found & set(exact[i])) / 100)
                ndis[g] = stats.ndis / len(q)  # the same every pass: the search is deterministic
        for g, graph in enumerate(graphs):
            point = {"ef_construction": graph["ef_construction"], "build_s": graph["build_s"], "ef_search": ef,
                     "tuned": ef == graph["tuned"],
                     "p50_ms": round(statistics.median(ms[g]), 3),
                     "p99_ms": round(float(np.percentile(ms[g], 99)), 3),
                     "recall": round(float(np.mean(hits[g])), 4), "distances_per_query": round(ndis[g])}
            h.log(str(point))
            points.append(point)
    m = h.machine_info(tools=())
    tuned = [p for p in points if p["tuned"]]
    md = "\n".join([
        "# HNSW graphs built with different effort, searched side by side (1M vectors)",
        "",
        f"{h.describe_machine(m)} · git {m['git']} · HNSW32,SQ8 over the same {len(graphs[0]['rows_of']):,} "
        f"vectors · {len(q)} held-out MIMICS queries, batch 1, one thread on core {a.cpu}; each graph in passes of "
        f"its own, {a.rounds} rounds, alternating which goes first.",
        "",
        f"    python -m benchmarks.graph_build_effort --bundles {a.bundles} --rounds {a.rounds}",
        "",
        "At each graph's tuned efSearch (the manifest's, tuned by the builder to recall 0.96 on the tuning "
        "half of the queries):",
        "",
        *h.markdown_table(
            ["efConstruction", "build s (manifest)", "tuned efSearch", "search p50 / p99 ms", "recall@100 held-out"],
            [[p["ef_construction"], h.fmt(p["build_s"], 0), p["ef_search"],
              f"{h.fmt(p['p50_ms'], 3)} / {h.fmt(p['p99_ms'], 3)}", h.fmt(p["recall"], 4)]
             for p in tuned]),
        "",
        "Mean links per node on the bottom layer (of at most 64): "
        + ", ".join(f"efC {g['ef_construction']}: {h.fmt(g['degree'], 1)}" for g in graphs)
        + ". Every point (distances: vectors scored per query, faiss' hnsw_stats):",
        "",
        *h.markdown_table(
            ["efSearch", *[f"efC {g['ef_construction']}: p50 ms / recall / distances" for g in graphs]],
            [[ef, *[f"{h.fmt(p['p50_ms'], 3)} / {h.fmt(p['recall'], 4)} / {p['distances_per_query']}"
                    for g in graphs for p in points if p["ef_search"] == ef
                    and p["ef_construction"] == g["ef_construction"]]] for ef in efs]),
        "",
    ])
    h.write_report(a.out, md, {"bundles": [str(b) for b in bundles], "queries": len(q), "machine": m,
                               "level0_degree": {g["ef_construction"]: g["degree"] for g in graphs},
                               "points": points})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
