"""Memory and latency per serving worker with the 1M index (IVF-PQ + SQ8 refine, HNSW over SQ8 codes),
recall on real queries.

The 1M vectors: real all-MiniLM-L6-v2 doc-tower embeddings of the MicroLens-100k titles and the
ActivityNet caption documents (the vectors ``benchmarks/real_query_recall.py`` caches), expanded to
``--n`` by clustered perturbation (``benchmarks.vectors.expand``, the bench's recipe).
Queries: the MIMICS-Manual Bing queries through the query tower; 300 tune (``--queries`` mode),
300 others are held out for the reported recall.

For each factory, the index builder's ``build_from_vectors`` builds and tunes to recall@100 ≥ 0.95,
then ``--workers`` processes each load the bundle with the service's own ``Retriever`` (the int8 query
tower, the faiss index, the id map) at the same time, answer every held-out query one at a time
(encode + search, batch 1) and report RSS and PSS from ``/proc/self/smaps_rollup``. PSS splits pages
shared between the workers (none are shared here: each worker reads the index into its own heap),
so PSS ≈ RSS minus the shared libraries' split.

    python -m benchmarks.index_memory --n 1000000     # -> docs/results/index_memory_1M.{md,json}
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness as h
from benchmarks.vectors import bench_ids, ensure_model_bundle, expand, real_query_split
from core.atomic import atomic_write_bytes, atomic_write_json
from core.search_params import describe_point

ROOT = h.ROOT
WORK = ROOT / "runs" / "realq"
# The production IVF-PQ recipe and the graph index the bench serves; RFlat / Refine(SQfp16) on request.
FACTORIES = ("IVF1024,PQ48,Refine(SQ8)", "HNSW32,SQ8")

WORKER = r"""
import json, sys, time
import numpy as np
from service.engine import Retriever
bundle, qfile = sys.argv[1], sys.argv[2]
queries = json.load(open(qfile))
r = Retriever(bundle, use_gpu=False)
r.retrieve(queries[:5], k=100)
lat = []
for q in queries:
    t0 = time.perf_counter()
    r.retrieve([q], k=100)
    lat.append((time.perf_counter() - t0) * 1e3)
mem = {}
for line in open("/proc/self/smaps_rollup"):
    parts = line.split()
    if parts[0] in ("Rss:", "Pss:"):
        mem[parts[0][:-1].lower()] = int(parts[1]) / 1024
print(json.dumps({"rss_mib": mem["rss"], "pss_mib": mem["pss"], "p50_ms": float(np.median(lat)),
                  "p99_ms": float(np.percentile(lat, 99)), "queries": len(lat)}), flush=True)
sys.stdin.read()  # stay alive until every worker has measured, so PSS sees the others
"""


def base_vectors() -> np.ndarray:
    vdir = WORK / "vectors"
    parts = sorted(vdir.glob("microlens_mimics-*.npy")) + sorted(vdir.glob("activitynet-*.npy"))
    if len(parts) < 2:
        raise SystemExit("error: run python -m benchmarks.real_query_recall first (it encodes the base catalog)")
    return np.concatenate([np.load(p) for p in parts[:2]])


def main(argv: list[str] | None = None) -> int:
    from core.manifest import verify_bundle
    from core.normalize import normalize_text
    from index_builder.build import build_from_vectors

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--model", type=Path, default=None,
                    help="exported bundle with its int8 variant (default: crops export into runs/realq/model)")
    ap.add_argument("--factories", default=";".join(FACTORIES), help="faiss factories, ;-separated")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ef-construction", type=int, default=None,
                    help="build HNSW graphs at this efConstruction instead of the builder's "
                         "(index_builder.ops.HNSW_EF_CONSTRUCTION); the bundle folder is named for it")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "index_memory_1M.md")
    a = ap.parse_args(argv)
    import faiss

    from index_builder import ops

    if a.ef_construction:
        ops.HNSW_EF_CONSTRUCTION = a.ef_construction  # what new_index reads for every HNSW graph
    faiss.omp_set_num_threads(2)  # build + exact truth; tuning and the workers time one thread
    base = base_vectors()
    a.model = ensure_model_bundle(a.model, WORK)
    vec_path = WORK / f"vectors_{a.n}.npy"
    if vec_path.is_file():
        vectors = np.load(vec_path, mmap_mode="r")
    else:
        vectors = expand(base, a.n)
        np.save(vec_path, vectors)
    # The bench's split (benchmarks.vectors.real_query_split): the fleet bench can serve this bundle
    # and measure recall on its held-out half, which no tuning here saw.
    split = real_query_split(n=300)
    if split is None:
        raise SystemExit("error: the MIMICS-Manual queries are missing (../shared/data/mimics_manual)")
    tune_q, report_q = [normalize_text(q) for q in split[0]], [normalize_text(q) for q in split[1]]
    m = verify_bundle(a.model).model
    assert m is not None
    from core.onnx_encoder import OnnxEncoder

    enc = OnnxEncoder(a.model / m.query_onnx, a.model / m.tokenizer, m.max_query_tokens)
    tune_v = enc.encode_batched(tune_q, 64, normalized=True)
    rep_v = enc.encode_batched(report_q, 64, normalized=True)
    qfile = WORK / "held_out_queries.json"
    qfile.write_text(json.dumps(report_q))
    ids = bench_ids(a.n)
    rows = []
    for factory in [f.strip() for f in a.factories.split(";") if f.strip()]:
        target = WORK / ("bundle_" + "".join(c if c.isalnum() else "_" for c in factory)
                         + (f"_efc{a.ef_construction}" if a.ef_construction else ""))
        if not (target / "index.faiss").is_file():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(a.model, target)
            t0 = time.perf_counter()
            build_from_vectors(target, np.ascontiguousarray(vectors), ids, tune_v, factory=factory,
                               report_queries=rep_v, n_latency=20, queries_kind="given",
                               queries_source="MIMICS-Manual Bing queries (half)", use_gpu=False)
            print(f"{factory}: built and tuned in {time.perf_counter() - t0:.0f} s", flush=True)
        sec = verify_bundle(target, require_index=True).index
        assert sec is not None
        # the tuning curve beside the report: the recall/latency of every grid point, not only the chosen
        for name in (sec.curve_json, sec.curve_png):
            if name:
                slug = "".join(c if c.isalnum() else "_" for c in factory)
                shutil.copyfile(target / name, a.out.parent / f"{a.out.stem}_curve_{slug}{Path(name).suffix}")
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(target), str(qfile)], cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(a.workers)]
        outs = []
        for p in procs:
            assert p.stdout is not None
            outs.append(json.loads(p.stdout.readline()))
        # every worker is loaded and measured once all have printed; PSS is read again now
        pss = [h.tree_pss_mib(p.pid) for p in procs]
        for p in procs:
            p.communicate("")
        row = {"factory": factory, "nprobe": sec.nprobe, "k_factor": sec.k_factor, "ef_search": sec.ef_search,
               "build_s": sec.build_seconds,
               "recall_tune": sec.recall_at_100, "recall_held_out": sec.recall_at_100_report,
               "index_mib": round((sec.index_bytes or 0) / 2**20, 1),
               "rss_mib_per_worker": round(max(o["rss_mib"] for o in outs), 1),
               "pss_mib_per_worker": round(max(pss), 1),
               "p50_ms": round(float(np.median([o["p50_ms"] for o in outs])), 3),
               "p99_ms": round(max(o["p99_ms"] for o in outs), 3), "workers": a.workers,
               "queries_per_worker": outs[0]["queries"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["# Memory per worker with the 1M index", "",
             f"{a.n} vectors (real MiniLM embeddings of MicroLens titles + ActivityNet captions, expanded); "
             f"{len(tune_q)} MIMICS tuning queries, {len(report_q)} held out (`benchmarks.vectors.real_query_split`); "
             f"{a.workers} workers loaded at "
             "once with the service's `Retriever` (int8 query tower + index + id map), each answering every "
             "held-out query at batch 1 (encode + search, 1 thread). Memory: RSS and PSS per worker "
             "(`/proc/PID/smaps_rollup`, the larger worker).", "",
             "    python -m benchmarks.index_memory " + shlex.join(sys.argv[1:] if argv is None else argv), "",
             "| factory | search point | recall@100 tune / held-out | build + tune s | index MiB | "
             "RSS MiB / worker | PSS MiB / worker | p50 / p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        point = describe_point(r["nprobe"], r["k_factor"], r["ef_search"])
        lines.append(f"| `{r['factory']}` | {point} | {r['recall_tune']} / "
                     f"{r['recall_held_out']} | {r['build_s']} | {r['index_mib']} | {r['rss_mib_per_worker']} | "
                     f"{r['pss_mib_per_worker']} | {r['p50_ms']} / {r['p99_ms']} |")
    atomic_write_bytes(a.out, ("\n".join(lines) + "\n").encode())
    atomic_write_json(a.out.with_suffix(".json"), {"n": a.n, "rows": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
