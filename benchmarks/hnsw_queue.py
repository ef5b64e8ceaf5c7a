"""faiss HNSW search with its bounded candidate queue (the default) vs the unbounded heap, on 1M.

    python -m benchmarks.hnsw_queue [--bundle runs/realq/bundle_HNSW32_SQ8]   # -> docs/results/hnsw_queue_1M.{md,json}

The bench's graph bundle (``benchmarks.index_memory``) answers the held-out MIMICS queries (encoded
once, as ``benchmarks.vectors.measured_recall`` does; batch 1, one faiss thread) at each efSearch. Each
queue kind searches every query in a pass of its own, and the passes alternate over ``--rounds``
rounds (bounded first, then unbounded first, ...), so drift falls on both alike and neither is timed
right after the other searched the same query (a second search of the same query finds the nodes it
needs already in the CPU caches and would be timed too fast). Reports the search time of each and
its recall@100 against exact search over the bench vectors.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as h
from benchmarks.vectors import bench_row, encode, real_query_split

WORK = h.ROOT / "runs" / "realq"
EF = (100, 256, 512, 896, 1024, 2048)


def main(argv: list[str] | None = None) -> int:
    import faiss

    from core.manifest import load_id_map, verify_bundle
    from core.search_params import hnsw_of
    from index_builder.faiss_utils import exact_topk

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=WORK / "bundle_HNSW32_SQ8")
    ap.add_argument("--vectors", type=Path, default=WORK / "vectors_1000000.npy")
    ap.add_argument("--rounds", type=int, default=4, help="passes per queue kind, alternating which goes first")
    ap.add_argument("--out", type=Path, default=h.ROOT / "docs" / "results" / "hnsw_queue_1M.md")
    a = ap.parse_args(argv)
    split = real_query_split()
    if split is None or not a.bundle.is_dir() or not a.vectors.is_file():
        raise SystemExit("error: needs the public data, the bench bundle and its vectors (make bench builds them)")
    _, held_out, _ = split
    faiss.omp_set_num_threads(1)
    man = verify_bundle(a.bundle, require_index=True, check_checksums=False)
    assert man.index is not None
    q = encode(a.bundle, held_out)
    index = faiss.read_index(str(a.bundle / man.index.index_file))
    hnsw = hnsw_of(index)
    if hnsw is None:
        raise SystemExit(f"error: {a.bundle} holds no HNSW index")
    rows_of = np.array([bench_row(i) for i in load_id_map(a.bundle / man.index.id_map_file)])
    h.log(f"exact top-100 of {len(q)} queries over {a.vectors}")
    exact = exact_topk(np.load(a.vectors), q, 100)
    results: list[dict[str, Any]] = []
    for ef in EF:
        hnsw.efSearch = ef
        ms: dict[bool, list[float]] = {True: [], False: []}
        hits: dict[bool, list[float]] = {True: [], False: []}
        for r in range(a.rounds):
            for bounded in ((True, False) if r % 2 == 0 else (False, True)):
                hnsw.search_bounded_queue = bounded
                for i in range(len(q)):
                    t0 = time.perf_counter()
                    _, lab = index.search(q[i : i + 1], 100)
                    ms[bounded].append((time.perf_counter() - t0) * 1e3)
                    if r == 0:
                        hits[bounded].append(len(set(rows_of[lab[0][lab[0] >= 0]]) & set(exact[i])) / 100)
        row: dict[str, Any] = {"ef_search": ef}
        for bounded, name in ((True, "bounded"), (False, "unbounded")):
            row[f"{name}_p50_ms"] = round(statistics.median(ms[bounded]), 3)
            row[f"{name}_recall"] = round(float(np.mean(hits[bounded])), 4)
        row["time_ratio"] = round(row["unbounded_p50_ms"] / row["bounded_p50_ms"], 2)
        h.log(str(row))
        results.append(row)
    m = h.machine_info(tools=())
    md = "\n".join([
        "# HNSW search: bounded candidate queue vs unbounded heap (1M vectors)",
        "",
        f"{h.describe_machine(m)} · git {m['git']} · {man.index.factory}, {man.index.ntotal:,} vectors · "
        f"{len(q)} held-out MIMICS queries, batch 1, one thread; each queue kind in passes of its own, "
        f"{a.rounds} rounds, alternating which goes first.",
        "",
        f"    python -m benchmarks.hnsw_queue --bundle {a.bundle}",
        "",
        *h.markdown_table(["efSearch", "bounded: p50 ms", "recall@100", "unbounded: p50 ms", "recall@100",
                           "unbounded / bounded time"],
                          [[r["ef_search"], h.fmt(r["bounded_p50_ms"], 3), h.fmt(r["bounded_recall"], 4),
                            h.fmt(r["unbounded_p50_ms"], 3), h.fmt(r["unbounded_recall"], 4),
                            h.fmt(r["time_ratio"], 2)] for r in results]),
        "",
    ])
    h.write_report(a.out, md, {"bundle": str(a.bundle), "queries": len(q), "machine": m, "points": results})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
