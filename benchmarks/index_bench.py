"""1M-vector index benchmark: build time, peak memory, index size, latency/recall at batch 1 and 32.

Encoding 1M documents with MiniLM on 2 shared cores is out of reach, so the catalog is built in two
steps (docs/explanation/index.md says the same):

1. ``prepare``: real all-MiniLM-L6-v2 embeddings (the bundle's ONNX towers) of a real catalog:
   the 19,738 MicroLens-100k titles plus one description per ActivityNet video (first two caption
   sentences, 10,009 train videos) ≈ 29.7k docs; and the MIMICS-Manual Bing queries (2,464 unique),
   encoded with the query tower, as held-out queries (split: tuning / reporting).
2. ``run``: expand the base docs to N (default 1M) by clustered perturbation
   (``benchmarks.vectors.expand``): each new vector is
   ``normalise((1-λ)·x_i + λ·x_j + ε)`` with ``i`` uniform over the base docs, ``j`` one of ``i``'s
   16 exact nearest neighbours, ``λ ~ U(0, 0.5)`` and ``ε ~ N(0, σ²I)``, σ = 0.01 per dimension
   (‖ε‖ ≈ 0.2). New vectors stay on the data manifold (between semantically close docs), so
   clusters keep real sizes and shapes instead of isotropic noise balls. The base docs are kept.

Then the index builder's own code path (``build_from_vectors``) builds the default production
index, tunes nprobe/k_factor on the tuning queries, and the report queries give the curve.

    nice -n 10 python -m benchmarks.index_bench prepare   # ~2-4 min, cached in runs/bench/
    nice -n 10 python -m benchmarks.index_bench run --n 1000000
    python -m benchmarks.index_bench scifact   # after `crops eval beir --index default/flat`
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import DATA, ROOT
from benchmarks.vectors import bench_ids, catalog_texts, expand

WORK = ROOT / "runs" / "bench"


def _queries() -> list[str]:
    seen: dict[str, None] = {}
    with open(DATA / "mimics_manual" / "MIMICS-Manual.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            q = (row.get("query") or "").strip()
            if q:
                seen[q] = None
    return list(seen)


def prepare(bundle: Path) -> None:
    from core.manifest import verify_bundle
    from core.normalize import normalize_text
    from core.onnx_encoder import OnnxEncoder

    m = verify_bundle(bundle).model
    assert m is not None
    WORK.mkdir(parents=True, exist_ok=True)
    texts, source = catalog_texts(DATA)
    print(f"catalog: {len(texts)} docs, {source}")
    docs = [normalize_text(t) for t in texts]
    queries = [normalize_text(q) for q in _queries()]
    t0 = time.perf_counter()
    denc = OnnxEncoder(bundle / (m.doc_onnx or m.query_onnx), bundle / m.tokenizer, m.max_doc_tokens)
    base = denc.encode_batched(docs, 64, normalized=True)
    qenc = OnnxEncoder(bundle / m.query_onnx, bundle / m.tokenizer, m.max_query_tokens)
    qv = qenc.encode_batched(queries, 64, normalized=True)
    np.save(WORK / "base_docs.npy", base)
    np.save(WORK / "queries.npy", qv)
    (WORK / "prepare.json").write_text(json.dumps({
        "docs": len(docs), "queries": len(queries), "model_id": m.model_id,
        "encode_seconds": round(time.perf_counter() - t0, 1),
    }, indent=2))
    print(f"encoded {len(docs)} docs and {len(queries)} queries in {time.perf_counter() - t0:.0f}s")


def run(bundle: Path, n: int, out_md: Path | None) -> None:
    import shutil

    from index_builder.build import build_from_vectors

    base = np.load(WORK / "base_docs.npy")
    queries = np.load(WORK / "queries.npy")
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(queries))
    tune_q, report_q = queries[perm[:1000]], queries[perm[1000:]]
    t0 = time.perf_counter()
    vectors = expand(base, n)
    t_expand = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    target = WORK / f"bundle_{n}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(bundle, target)
    ids = bench_ids(n)
    t1 = time.perf_counter()
    sec = build_from_vectors(target, vectors, ids, tune_q, report_queries=report_q, corpus="bench:expanded")
    build_s = time.perf_counter() - t1
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "n": n, "base_docs": len(base), "tune_queries": len(tune_q), "report_queries": len(report_q),
        "expand_seconds": round(t_expand, 1), "build_seconds": round(build_s, 1),
        "build_breakdown": sec.timings,
        "peak_rss_before_build_mib": round(rss0 / 1024), "peak_rss_mib": round(rss1 / 1024),
        "vectors_mib": round(vectors.nbytes / 2**20),
        "index_bytes": (target / sec.index_file).stat().st_size,
        "factory": sec.factory, "nprobe": sec.nprobe, "k_factor": sec.k_factor,
        "recall_at_100": sec.recall_at_100, "chosen": sec.chosen, "recall_at_100_report": sec.recall_at_100_report,
        "curve": str(target / "index_curve.json"), "cpu": os.cpu_count(),
    }
    (WORK / f"result_{n}.json").write_text(json.dumps(result, indent=2))
    shutil.copyfile(target / "index_curve.png", WORK / f"curve_{n}.png")
    print(json.dumps(result, indent=2))


def scifact(eval_dir: Path) -> None:
    """nDCG@10 / Recall@100 on SciFact test through the default IVF-PQ+refine index at several
    operating points vs the Flat index (both bundles from ``crops eval beir``)."""
    import faiss

    from core.ir_metrics import mean_metrics
    from core.manifest import load_id_map, verify_bundle
    from core.onnx_encoder import OnnxEncoder
    from index_builder.graded import load_graded

    data = DATA / "beir_scifact"
    gs = load_graded(data)
    flat_dir = next(eval_dir.glob("beir_scifact-*-Flat"))
    ivf_dir = next(eval_dir.glob("beir_scifact-*-default"))
    m = verify_bundle(ivf_dir, require_index=True)
    assert m.model is not None and m.index is not None
    qids = list(gs.queries)
    enc = OnnxEncoder(ivf_dir / m.model.query_onnx, ivf_dir / m.model.tokenizer, m.model.max_query_tokens)
    qv = enc.encode_batched([gs.queries[q] for q in qids])
    qrels = {q: {d: float(g) for d, g in r.items()} for q, r in gs.qrels.items()}

    def evaluate(bundle: Path, nprobe: int | None, k_factor: float | None) -> dict[str, float]:
        mm = verify_bundle(bundle, require_index=True)
        assert mm.index is not None
        index = faiss.read_index(str(bundle / mm.index.index_file))
        ids = load_id_map(bundle / mm.index.id_map_file)
        if nprobe is not None:
            faiss.extract_index_ivf(index).nprobe = nprobe
            refine: Any = faiss.downcast_index(index)
            refine.k_factor = k_factor
        faiss.omp_set_num_threads(1)
        t0 = time.perf_counter()
        _, rows = index.search(qv, 100)
        ms = (time.perf_counter() - t0) * 1e3 / len(qv)
        run = {q: [ids[r] for r in row if r >= 0] for q, row in zip(qids, rows, strict=True)}
        met = mean_metrics(run, qrels, ks=(10, 100))
        return {"ndcg@10": round(met["ndcg@10"], 4), "recall@100": round(met["recall@100"], 4),
                "search_ms_per_query": round(ms, 3)}

    rows: list[dict[str, Any]] = [{"index": "Flat", **evaluate(flat_dir, None, None)}]
    for nprobe, kf in ((m.index.nprobe, m.index.k_factor), (16, 4.0), (8, 2.0), (4, 1.0), (64, 16.0)):
        rows.append({"index": m.index.factory, "nprobe": nprobe, "k_factor": kf,
                     "chosen": (nprobe, kf) == (m.index.nprobe, m.index.k_factor), **evaluate(ivf_dir, nprobe, kf)})
    for r in rows[1:]:
        r["ndcg@10_loss_vs_flat"] = round(rows[0]["ndcg@10"] - r["ndcg@10"], 4)
    (WORK / "scifact_sweep.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "run", "scifact"])
    ap.add_argument("--bundle", type=Path, default=WORK / "model", help="exported model bundle")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--eval-dir", type=Path, default=ROOT / "runs" / "eval", help="crops eval beir --work")
    a = ap.parse_args()
    if a.step == "prepare":
        prepare(a.bundle)
    elif a.step == "scifact":
        scifact(a.eval_dir)
    else:
        run(a.bundle, a.n, a.report)


if __name__ == "__main__":
    main()
