"""Fixed-rate fleet benchmark: open loop at 400 req/s from 32 keep-alive connections, side by side.

Rows, one after another on the same box, same bundle, same queries:

1. limit: ``benchmarks/limit.py``, the serving path (normalise + tokenise + ONNX + faiss + ids) in a
   loop with no HTTP, one process per core: the most the box can answer.
2. service under uvicorn: ``crops serve --workers 2`` (least-conn), cache off.
3. service under granian: the same FastAPI app (``service.app.create_app``), 2 granian workers.
4. strong peer: ``benchmarks/strong_peer.py``, plain FastAPI + the same int8 ONNX tower, tokenizer and
   faiss index at the same nprobe/k_factor, 2 uvicorn workers.

Each HTTP row gets ``loadtest.openloop`` (asyncio, request ``i`` sent at ``start + i / rate``,
latency from the release time, 32 keep-alive connections) at ``--rate`` for ``--seconds``
(p50/p99/p99.9), then a bisection over fixed rates for the highest rate with p99 ≤ the SLO, no
failures and ≥ 98 % of the rate achieved. Memory per worker: peak RSS (VmHWM) of the server's
process tree divided by its workers (nothing is shared between workers but the libraries' text).
Queries are distinct real queries (MIMICS-Manual, then ActivityNet caption sentences): no query is
sent twice, so single-flight never merges requests and no cache is involved.

    python benchmarks/fleet.py --bundle runs/realq/bundle_IVF1024_PQ48_Refine_SQ8_ --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench  # noqa: E402  (the benchmark's server/port/RSS helpers)

from core.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402
from loadtest.openloop import open_loop  # noqa: E402
from loadtest.ready import wait_workers  # noqa: E402
from loadtest.report import Sample, percentile  # noqa: E402


def distinct_queries(work: Path, n: int) -> list[str]:
    """Real queries, each once: MIMICS-Manual Bing queries, then ActivityNet caption sentences."""
    from index_builder.queries import read_query_texts

    out: dict[str, None] = {}
    for name in ("microlens_mimics", "activitynet", "trec_session", "scifact"):
        f = work / "sets" / name / "queries.jsonl"
        if f.is_file():
            for q in read_query_texts(f):
                out.setdefault(q, None)
    if len(out) < n:
        raise SystemExit(f"error: {len(out)} distinct queries under {work}/sets, need {n}; "
                         "run benchmarks/real_query_recall.py first")
    return list(out)[:n]


def stats(samples: list[Sample], seconds: float) -> dict[str, Any]:
    hold = [s for s in samples if s.t >= 1.0]  # first second: connections warm up
    ok = [s.latency_ms for s in hold if s.ok]
    return {"count": len(hold), "failures": sum(1 for s in hold if not s.ok),
            "achieved_rps": round(len(samples) / seconds, 1),
            "p50_ms": round(percentile(ok, 50), 3), "p99_ms": round(percentile(ok, 99), 3),
            "p999_ms": round(percentile(ok, 99.9), 3)}


def http_row(name: str, cmd: list[str], env: dict[str, str], port: int, bodies: list[bytes], *, rate: float,
             seconds: float, slo_ms: float, hi: float, workers: int, connections: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    row: dict[str, Any] = {"name": name, "workers": workers, "connections": connections}
    used = 0

    def run(r: float) -> dict[str, Any]:
        nonlocal used
        need = int(r * seconds) + 10
        if used + need > len(bodies):
            used = 0  # only between runs: within one run every query is distinct
        part = bodies[used : used + need]
        used += need
        return stats(open_loop(url, part, rate=r, duration=seconds, connections=connections), seconds)

    with bench.server(cmd, env, port, name) as proc:
        if workers > 1 and name != "peer":  # the peer has no /info; its warm-up below loads both workers
            with contextlib.suppress(Exception):
                wait_workers(url, workers, timeout=60.0)
        open_loop(url, bodies[-200:], rate=50, duration=3, connections=connections)  # warm-up
        at = run(rate)
        row["at_rate"] = {"rate": rate, **at}
        bench.log(f"{name}: {rate:g} req/s → p50 {at['p50_ms']} p99 {at['p99_ms']} p99.9 {at['p999_ms']} ms, "
                  f"{at['failures']} failures, {at['achieved_rps']} achieved")
        lo, best, points = 0.0, None, []
        ok_at = at["p99_ms"] <= slo_ms and at["failures"] == 0 and at["achieved_rps"] >= 0.98 * rate
        lo, best = (rate, rate) if ok_at else (0.0, None)
        hi = max(hi, rate * 1.05) if ok_at else rate
        for _ in range(4):
            if hi - lo < 10:
                break
            r = round((lo + hi) / 2)
            st = run(r)
            ok = st["p99_ms"] <= slo_ms and st["failures"] == 0 and st["achieved_rps"] >= 0.98 * r
            points.append({"rate": r, **st, "within_slo": ok})
            bench.log(f"{name}: {r} req/s → p99 {st['p99_ms']} ms ({'ok' if ok else 'over'})")
            if ok:
                lo, best = r, float(r)
            else:
                hi = r
        row["search"] = points
        row["max_rps_within_slo"] = best
        row["peak_rss_mib_tree"] = bench.tree_peak_rss_mib(proc.pid)
        row["rss_mib_per_worker"] = round(row["peak_rss_mib_tree"] / max(1, workers), 1)
    return row


def main(argv: list[str] | None = None) -> int:
    import limit

    from core.manifest import verify_bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="complete bundle (model with int8 + index)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "realq", help="query sets folder parent")
    ap.add_argument("--rate", type=float, default=400.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--slo-p99-ms", type=float, default=10.0)
    ap.add_argument("--rows", default="uvicorn,granian,peer", help="HTTP rows to run")
    ap.add_argument("--recall", type=float, default=None, help="recall@100 on real queries (from index_memory)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "fleet.md")
    ap.add_argument("--bench-json", type=Path, default=ROOT / "docs" / "results" / "bench.json",
                    help="add the flat keys to this bench.json (its other keys are kept)")
    a = ap.parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) must unwind through bench.server's cleanup, or the servers stay.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    man = verify_bundle(a.bundle, require_index=True)
    assert man.model is not None and man.index is not None
    onnx_file = man.model.variants["int8"].file if "int8" in man.model.variants else None
    n_q = int(a.rate * a.seconds) * 2 + 400
    queries = distinct_queries(a.work, min(n_q, 20_000))
    bodies = [json.dumps({"query": q}).encode() for q in queries]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load0 = os.getloadavg()

    bench.log(f"limit: 2 processes on cores 0 and 1, {a.seconds:g}s")
    pool = limit.LimitPool(a.bundle, queries, cpus=[0, 1], onnx_file=onnx_file)
    try:
        lim = pool.run(a.seconds, warmup_s=2.0)
    finally:
        pool.close()
    bench.log(f"limit: {lim['rps']} req/s (p99 {lim['p99_ms']} ms)")
    env = {**os.environ, "CROPS_CACHE": "none", "CROPS_ENCODER_PRECISION": "int8" if onnx_file else "fp32",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "CROPS_BUNDLE": str(a.bundle.resolve())}
    env.pop("CROPS_REDIS_URL", None)
    env.pop("CROPS_EXPERIMENTS", None)
    rows: dict[str, Any] = {}
    failed: dict[str, str] = {}
    wanted = [r.strip() for r in a.rows.split(",") if r.strip()]
    for name in wanted:
        port = bench.free_port()
        if name == "uvicorn":
            cmd = [sys.executable, "-m", "crops", "serve", "--bundle", str(a.bundle), "--port", str(port),
                   "--workers", "2", "--balance", "least-conn"]
        elif name == "granian":
            cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--workers", "2",
                   "--host", "127.0.0.1", "--port", str(port), "--no-ws", "--log-level", "warning",
                   "--working-dir", str(HERE), "granian_app:create"]
        elif name == "peer":
            cmd = [sys.executable, str(HERE / "strong_peer.py"), "--bundle", str(a.bundle), "--port", str(port),
                   "--workers", "2"]
        else:
            print(f"error: unknown row {name!r}", file=sys.stderr)
            return 2
        try:
            rows[name] = http_row(name, cmd, env, port, bodies, rate=a.rate, seconds=a.seconds,
                                  slo_ms=a.slo_p99_ms, hi=float(lim["rps"]), workers=2, connections=a.connections)
        except Exception as exc:  # one server failing to start must not lose the other rows
            bench.log(f"{name}: failed: {exc}")
            failed[name] = str(exc)
    service: dict[str, Any] = {k: rows[k] for k in ("uvicorn", "granian") if k in rows}
    best_name: str | None = max(service, key=lambda k: service[k]["max_rps_within_slo"] or 0.0) if service else None
    svc: dict[str, Any] = service[best_name] if best_name is not None else {}
    peer = rows.get("peer", {})
    peer_rps = peer.get("max_rps_within_slo")
    flat = {
        "limit_rps": lim["rps"],
        "service_rps": svc.get("max_rps_within_slo"),
        "connections": a.connections,
        "p99_ms_at_400": svc.get("at_rate", {}).get("p99_ms"),
        "peer_rps": peer_rps,
        "rss_mib_per_worker": svc.get("rss_mib_per_worker"),
        "recall_at_100": a.recall if a.recall is not None else man.index.recall_at_100,
    }
    result = {**flat, "server": best_name, "rows": rows, "failed": failed, "limit": lim, "rate": a.rate,
              "seconds": a.seconds,
              "slo_p99_ms": a.slo_p99_ms, "started": started, "loadavg_start": load0,
              "loadavg_end": os.getloadavg(), "queries": f"{len(queries)} distinct real queries, none repeated",
              "index": {"factory": man.index.factory, "ntotal": man.index.ntotal, "nprobe": man.index.nprobe,
                        "k_factor": man.index.k_factor}}
    atomic_write_json(a.out.with_suffix(".json"), result)
    if a.bench_json.is_file():
        bj = json.loads(a.bench_json.read_text())
        bj.update({k: v for k, v in flat.items() if v is not None})
        bj["service_over_limit_fleet"] = round(flat["service_rps"] / lim["rps"], 3) if flat["service_rps"] else None
        bj["service_over_peer"] = (round(flat["service_rps"] / peer_rps, 2)
                                   if flat["service_rps"] and peer_rps else None)
        bj["fleet"] = {k: v for k, v in result.items() if k != "rows"}
        atomic_write_json(a.bench_json, bj)
    lines = [
        "# Fixed-rate fleet benchmark", "",
        f"{man.index.factory} over {man.index.ntotal} vectors (nprobe {man.index.nprobe}, k_factor "
        f"{man.index.k_factor}); open loop from {a.connections} keep-alive connections, {a.seconds:g} s per point, "
        f"SLO p99 ≤ {a.slo_p99_ms:g} ms; {len(queries)} distinct real queries, none sent twice; cache off; "
        f"started {started}, load average {load0[0]:.2f} at the start. The limit (no HTTP, 2 processes) did "
        f"{lim['rps']} req/s.", "",
        f"    python benchmarks/fleet.py --bundle {a.bundle} --seconds {a.seconds:g}", "",
        f"| row | p50 / p99 / p99.9 ms at {a.rate:g} req/s | failures | max req/s within the SLO | "
        "÷ limit | RSS MiB per worker |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        at = r["at_rate"]
        best = r["max_rps_within_slo"]
        lines.append(f"| {name} | {at['p50_ms']} / {at['p99_ms']} / {at['p999_ms']} | {at['failures']} | "
                     f"{best if best is not None else 'none'} | "
                     f"{round(best / lim['rps'], 3) if best else '–'} | {r['rss_mib_per_worker']} |")
    for name, why in failed.items():
        lines.append(f"| {name} | failed: {why} | | | | |")
    lines += ["", f"Kept: {best_name} (the faster of the two servers within the SLO).", ""]
    atomic_write_bytes(a.out, "\n".join(lines).encode())
    print(json.dumps(flat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
