"""The stock peer's index: faiss' own HNSW graph at faiss' defaults, tuned to the served bundle's recall.

What a team that knows faiss, but not this project, would put behind its embedding server on the same
vectors: ``HNSW32`` (float vectors, ``efConstruction`` 40, rows in insertion order), the standard
in-memory graph. efSearch is raised by the project's own tuner (``index_builder.tuning.tune``) until
recall@100 on the same tuning queries reaches the served bundle's target by the same rule, so both
indexes stand at the same recall, chosen the same way; recall on the same held-out queries is recorded
beside it. What this index leaves out, against the builder's graph: ``efConstruction`` 400, SQ8 codes,
rows in cluster order (``docs/explanation/index.md``). The peer still searches it with the unbounded
candidate heap, as it does every graph: that costs nothing to adopt.

The bundle it writes (the model files of ``--model`` plus this index) is what the fleet's ``stock`` row
serves through ``benchmarks.strong_peer``:

    python -m benchmarks.stock_index --bundle runs/realq/bundle_HNSW32_SQ8 \\
        --vectors runs/realq/vectors_1000000.npy          # -> runs/realq/bundle_HNSW32_SQ8_stock
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness as h
from benchmarks.vectors import bench_ids, encode, real_query_split

STOCK_FACTORY = "HNSW32"


def stock_bundle_path(bundle: Path) -> Path:
    """Where the stock peer's bundle for ``bundle`` lies (the fleet looks there)."""
    return Path(str(bundle).rstrip("/") + "_stock")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True, help="the served bundle (its target recall)")
    ap.add_argument("--vectors", type=Path, required=True, help=".npy of its vectors, in bench id order")
    ap.add_argument("--model", type=Path, default=h.ROOT / "runs" / "realq" / "model",
                    help="the exported model bundle (no index) the served bundle was built from")
    ap.add_argument("--out", type=Path, default=None, help="default: BUNDLE_stock")
    a = ap.parse_args(argv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    import faiss

    from core.errors import CropsError
    from core.manifest import IndexSection, verify_bundle
    from index_builder.build import persist_index
    from index_builder.faiss_utils import exact_topk, recall_vs_exact
    from index_builder.ops import add_rows
    from index_builder.tuning import reaches, tune, tune_goal

    try:
        served = verify_bundle(a.bundle, require_index=True, check_checksums=False)
        model = verify_bundle(a.model, check_checksums=False)
    except CropsError as exc:
        return fail(str(exc))
    assert served.index is not None and model.model is not None
    if served.index.model_id != model.model.model_id:
        return fail(f"{a.model} holds model {model.model.model_id}, {a.bundle} was built from {served.index.model_id}")
    if not a.vectors.is_file():
        return fail(f"{a.vectors} is missing: run python -m benchmarks.index_memory first")
    out = a.out or stock_bundle_path(a.bundle)
    if out.resolve() in (a.bundle.resolve(), a.model.resolve()):
        return fail(f"--out {out} would overwrite an input bundle")  # it is emptied before the build
    try:
        vectors = np.ascontiguousarray(np.load(a.vectors), dtype=np.float32)
    except (OSError, ValueError) as exc:
        return fail(f"{a.vectors} is not a .npy of vectors ({exc})")
    if vectors.shape != (served.index.ntotal, served.index.dim):
        return fail(f"{a.vectors} holds {vectors.shape}, the bundle indexes {served.index.ntotal} x {served.index.dim}")
    split = real_query_split(n=served.index.recall_queries or 300)
    if split is None:
        return fail("the MIMICS-Manual queries are missing")
    target = served.index.target_recall or 0.95
    goal = tune_goal(target, getattr(served.index, "tune_margin", 0.0) or 0.0)
    tune_v, held_v = encode(a.model, split[0]), encode(a.model, split[1])

    faiss.omp_set_num_threads(2)  # the build and exact truth use both cores; the tuner times one thread
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(a.model, out)
    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)  # what "HNSW32" builds
    ef_construction = int(index.hnsw.efConstruction)  # faiss' default, 40
    h.log(f"{STOCK_FACTORY} at faiss' defaults (efConstruction {ef_construction}) over {len(vectors):,} rows")
    t0 = time.perf_counter()
    add_rows(index, vectors, start=0)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen, _points = tune(index, tune_v, exact_topk(vectors, tune_v, 100), goal, n_latency=20)
    tune_s = time.perf_counter() - t0
    _, found = index.search(held_v, 100)
    held = round(recall_vs_exact(found, exact_topk(vectors, held_v, 100)), 4)
    section = IndexSection(
        model_id=model.model.model_id, factory=STOCK_FACTORY, ntotal=int(index.ntotal), dim=vectors.shape[1],
        ef_search=chosen.ef_search, recall_at_100=round(chosen.recall, 4), recall_queries=len(tune_v),
        build_seconds=round(build_s + tune_s, 2), target_recall=target, target_met=reaches(chosen, goal),
        recall_at_100_report=held, report_queries=len(held_v), built_on="cpu",
        chosen={"b1_ms_p50": chosen.b1_ms_p50, "b1_ms_p99": chosen.b1_ms_p99, "b32_ms": chosen.b32_ms},
        timings={"add_s": round(build_s, 2), "tune_s": round(tune_s, 2)},
    )
    section.ef_construction = ef_construction  # type: ignore[attr-defined]  # an extra field
    persist_index(out, model, index, bench_ids(len(vectors)), section, tune_v)
    summary = {"bundle": str(out), "factory": STOCK_FACTORY, "ef_construction": ef_construction,
               "ef_search": chosen.ef_search, "recall_tune": section.recall_at_100, "recall_held_out": held,
               "served_ef_search": served.index.ef_search, "served_recall_tune": served.index.recall_at_100,
               "served_recall_held_out": served.index.recall_at_100_report, "target": target,
               "add_s": round(build_s, 1), "tune_s": round(tune_s, 1), "b1_ms_p50": chosen.b1_ms_p50}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
