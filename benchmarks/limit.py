"""The in-process limit: normalise + tokenise + ONNX encode + faiss search + id lookup in a loop, no HTTP.

One process per core (pinned with ``sched_setaffinity``), one intra-op thread and one faiss thread
each: the most requests/s the serving path can do on this box, the ceiling the service is compared
against. Prints one JSON object (rps, latency percentiles, peak RSS per process).

    python -m benchmarks.limit --bundle B --queries queries.json [--seconds 10] [--cpus 0,1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path
from typing import Any

from loadtest.report import percentile


def _worker(
    bundle: str,
    onnx_file: str | None,
    queries: list[str],
    commands: Any,
    cpu: int | None,
    barrier: Any,
    out: Any,
    k: int,
) -> None:
    """Load once, then for each command (seconds, warm-up seconds) run one measured loop; None ends."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import faiss
    import numpy as np

    from core.manifest import load_id_map, verify_bundle
    from core.normalize import normalize_text
    from core.onnx_encoder import OnnxEncoder
    from core.search_params import apply_manifest_params

    faiss.omp_set_num_threads(1)
    bdir = Path(bundle)
    m = verify_bundle(bdir, require_index=True, check_checksums=False)
    assert m.model is not None and m.index is not None
    enc = OnnxEncoder(
        bdir / (onnx_file or m.model.query_onnx),
        bdir / m.model.tokenizer,
        m.model.max_query_tokens,
        intra_op_threads=1,
        use_gpu=False,
    )
    index = faiss.read_index(str(bdir / m.index.index_file))
    ids = load_id_map(bdir / m.index.id_map_file)
    apply_manifest_params(index, m.index)

    def one(q: str) -> list[tuple[str, float]]:
        vec = enc.encode([normalize_text(q)], normalized=True)
        scores, rows = index.search(np.ascontiguousarray(vec, dtype=np.float32), k)
        return [(ids[r], float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]

    for q in queries[:50]:  # first calls allocate
        one(q)
    out.put({"ready": cpu})
    i = 0
    while True:
        cmd = commands.get()
        if cmd is None:
            return
        seconds, warmup_s = cmd
        t_end = time.perf_counter() + warmup_s
        while time.perf_counter() < t_end:  # unmeasured, as the service gets before each measured run
            one(queries[i % len(queries)])
            i += 1
        barrier.wait()
        lat: list[float] = []
        n = 0
        t_end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            one(queries[i % len(queries)])
            lat.append((time.perf_counter() - t0) * 1e3)
            n += 1
            i += 1
        out.put(
            {
                "cpu": cpu,
                "requests": n,
                "latencies": lat,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )


class LimitPool:
    """The limit's processes (one pinned per core), loaded once and measured as often as asked.

    Kept alive between runs: a caller can measure it again later without loading the bundle again.
    """

    def __init__(
        self,
        bundle: Path,
        queries: list[str],
        *,
        cpus: list[int] | None = None,
        procs: int = 2,
        onnx_file: str | None = None,
        k: int = 100,
    ) -> None:
        ctx = mp.get_context("spawn")  # a clean interpreter per worker: no inherited thread pools
        self.cpus: list[int | None] = list(cpus) if cpus else [None] * procs
        self.barrier = ctx.Barrier(len(self.cpus))
        self.out = ctx.Queue()
        self.commands = [ctx.Queue() for _ in self.cpus]
        self.onnx_file = onnx_file
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(str(bundle), onnx_file, queries[j:] + queries[:j], self.commands[j], c, self.barrier,
                      self.out, k),
            )
            for j, c in enumerate(self.cpus)
        ]
        for p in self.procs:
            p.start()
        for _ in self.procs:  # loaded and warmed: nothing of theirs overlaps a later measurement
            self.out.get(timeout=900)

    def run(self, seconds: float, warmup_s: float = 0.0) -> dict[str, Any]:
        """One measured run of ``seconds`` on every process at once; aggregate requests/s and latency."""
        for q in self.commands:
            q.put((seconds, warmup_s))
        results = [self.out.get(timeout=seconds + warmup_s + 600) for _ in self.procs]
        lat = [x for r in results for x in r["latencies"]]
        total = sum(r["requests"] for r in results)
        return {
            "rps": round(total / seconds, 1),
            "processes": len(self.procs),
            "cpus": [r["cpu"] for r in results],
            "p50_ms": round(percentile(lat, 50), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "peak_rss_mib": round(sum(r["peak_rss_mib"] for r in results), 1),
            "peak_rss_mib_per_process": [round(r["peak_rss_mib"], 1) for r in results],
            "seconds": seconds,
            "onnx": self.onnx_file or "query_onnx (manifest)",
        }

    def close(self) -> None:
        for q in self.commands:
            q.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()

    def __enter__(self) -> LimitPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_limit(
    bundle: Path,
    queries: list[str],
    *,
    seconds: float = 10.0,
    cpus: list[int] | None = None,
    procs: int = 2,
    onnx_file: str | None = None,
    k: int = 100,
) -> dict[str, Any]:
    """Run ``procs`` pinned worker processes once for ``seconds``; aggregate requests/s and latency."""
    with LimitPool(bundle, queries, cpus=cpus, procs=procs, onnx_file=onnx_file, k=k) as pool:
        return pool.run(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--queries", type=Path, required=True, help="JSON list of query strings")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cpus", default="0,1", help="one process pinned per listed core ('' = unpinned)")
    ap.add_argument("--procs", type=int, default=2, help="processes when --cpus is ''")
    ap.add_argument(
        "--onnx", default=None, help="ONNX file in the bundle (default: the manifest's query tower)"
    )
    a = ap.parse_args()
    cpus = [int(c) for c in a.cpus.split(",") if c.strip()] or None
    res = run_limit(
        a.bundle,
        json.loads(a.queries.read_text()),
        seconds=a.seconds,
        cpus=cpus,
        procs=a.procs,
        onnx_file=a.onnx,
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
