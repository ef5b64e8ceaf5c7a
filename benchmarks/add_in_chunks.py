"""Does adding a graph's rows in chunks (for a progress bar) cost recall or build time?

The builder adds rows in chunks of ``index_builder.ops.ADD_CHUNK`` so that a long build shows
progress. IVF and flat layers encode each row on its own (chunks change nothing, tested in
``tests/index_builder``); a graph inserts each chunk into the graph the earlier chunks built. This
builds ``HNSW32,SQ8`` (at ``index_builder.ops.HNSW_EF_CONSTRUCTION``) over the first ``--n`` bench
vectors three times with the builder's ``train_and_add`` on every core: in one add call, in chunks,
and in one add call again (two one-call builds show how much a build varies by itself: faiss inserts
in parallel). Recall@100 against exact search on the held-out MIMICS queries (int8 query tower) at
each efSearch.

    python -m benchmarks.add_in_chunks --n 200000     # -> docs/results/add_in_chunks.{md,json}
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as h
from benchmarks.vectors import real_query_split

WORK = h.ROOT / "runs" / "realq"
FACTORY = "HNSW32,SQ8"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=Path, default=WORK / "vectors_1000000.npy")
    ap.add_argument("--model", type=Path, default=WORK / "model", help="bundle with the int8 query tower")
    ap.add_argument("--n", type=int, default=200_000, help="the first N bench vectors")
    ap.add_argument("--ef", default="128,256,512")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=h.ROOT / "docs" / "results" / "add_in_chunks.md")
    a = ap.parse_args(argv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    try:
        efs = [int(x) for x in a.ef.split(",")]
    except ValueError:
        return fail(f"--ef takes integers, got {a.ef!r}")
    if not a.vectors.is_file():
        return fail(f"{a.vectors} is missing: run python -m benchmarks.index_memory first")
    from index_builder import ops

    if a.n <= ops.ADD_CHUNK:
        return fail(f"--n must exceed one chunk ({ops.ADD_CHUNK} rows)")
    split = real_query_split()
    if split is None:
        return fail("the MIMICS-Manual queries are missing")
    import faiss

    from core.normalize import normalize_text
    from core.onnx_encoder import OnnxEncoder
    from core.search_params import set_search_params
    from index_builder.faiss_utils import exact_topk, recall_vs_exact

    vectors = np.ascontiguousarray(np.load(a.vectors, mmap_mode="r")[: a.n], dtype=np.float32)
    enc = OnnxEncoder(a.model / "query_encoder.int8.onnx", a.model / "tokenizer.json", 64)
    held = split[1][: a.queries]
    queries = enc.encode([normalize_text(q) for q in held], normalized=True)
    truth = exact_topk(vectors, queries, 100)
    # builds on every core, as `crops index build` runs (the benchmarks package caps OpenMP at 1
    # thread for its latency measurements); faiss then inserts in parallel, so a graph varies by itself
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    chunk = ops.ADD_CHUNK
    builds: list[dict[str, Any]] = []
    for name, size in (("one add call", len(vectors)), (f"chunks of {chunk:,}", chunk),
                       ("one add call, again", len(vectors))):
        ops.ADD_CHUNK = size
        threads = int(faiss.omp_get_max_threads())
        t0, c0 = time.perf_counter(), time.process_time()
        index, _ = ops.train_and_add(FACTORY, vectors, seed=0, use_gpu=False)
        wall = time.perf_counter() - t0
        # the cores the build kept busy (process CPU time over wall time): what the thread count gave
        row: dict[str, Any] = {"build": name, "build_s": round(wall, 1), "omp_threads": threads,
                               "cores_busy": round((time.process_time() - c0) / wall, 2), "recall": {}}
        for ef in efs:
            set_search_params(index, ef_search=ef)
            _, found = index.search(queries, 100)
            row["recall"][ef] = round(recall_vs_exact(found, truth), 4)
        builds.append(row)
        h.log(f"{name}: {row['build_s']} s, recall {row['recall']}")
        del index
    ops.ADD_CHUNK = chunk
    m = h.machine_info(())
    f = h.fmt
    md = "\n".join([
        "# Adding a graph's rows in chunks",
        "",
        f"{h.describe_machine(m)} · git {m['git']} · faiss {m['versions'].get('faiss-cpu')} · `{FACTORY}` "
        f"at efConstruction {ops.HNSW_EF_CONSTRUCTION} over the first {a.n:,} bench vectors · recall@100 vs exact "
        f"on {len(held)} held-out MIMICS queries.",
        "",
        f"    python -m benchmarks.add_in_chunks --n {a.n}",
        "",
        *h.markdown_table(["build", "seconds", "faiss threads", "cores busy",
                           *[f"recall@100, efSearch {ef}" for ef in efs]],
                          [[b["build"], f(b["build_s"]), b["omp_threads"], f(b["cores_busy"], 2),
                            *[f(b["recall"][ef], 4) for ef in efs]] for b in builds]),
        "",
    ])
    h.write_report(a.out, md, {"factory": FACTORY, "n": a.n, "chunk": chunk, "queries": len(held),
                               "ef_construction": ops.HNSW_EF_CONSTRUCTION, "machine": m, "builds": builds,
                               "command": f"python -m benchmarks.add_in_chunks --n {a.n}"})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
