"""The performance benchmark: the in-process limit, the service and its peers at a fixed rate, side by side.

    make bench                                        # 1M vectors -> docs/results/bench.{md,json,png}
    python -m benchmarks.fleet --quick                # 100k vectors, 5 s points, for development
    python -m benchmarks.fleet --bundle B --vectors V.npy --seconds 10    # a bundle built elsewhere

Rows, one after another on the same box, bundle and queries, never two at once:

1. limit: ``benchmarks.limit``, the serving path (normalise + tokenise + ONNX + faiss + ids) in a loop
   with no HTTP, one process pinned per core: the most the box can answer. Measured before and after
   the HTTP rows (the box's speed drifts); the limit is their mean.
2. service: ``crops serve``, the shipped process model on the 2 cores: one worker running two batch
   slots (``CROPS_BATCH_SLOTS``, docs/results/batch_slots.md), cache off.
3. nginx: ``deploy/nginx/nginx.conf`` (least_conn) in front of that one ``crops serve`` replica, the
   deployed unit; only when nginx is installed (``apt-get install nginx-light``), else the row is
   skipped and says so.
4. granian: the same FastAPI app (``benchmarks.granian_app``) under granian, one worker.
5. peer: ``benchmarks.strong_peer``, plain FastAPI + the same int8 ONNX tower, tokenizer and faiss index
   at the same nprobe/k_factor, 2 uvicorn workers.
6. stock: the same peer app over faiss' own ``HNSW32`` at faiss' defaults, efSearch tuned to the same
   recall by the same rule (``benchmarks.stock_index`` builds it beside the bundle; skipped until then):
   what a team that knows faiss but not this project would serve on the same vectors.
7. naive: ``benchmarks.naive_peer``, sentence-transformers (torch) + exact faiss Flat over the same
   vectors, one uvicorn worker, threads = cores (needs ``--vectors`` or the built bench vectors).

Each HTTP row but the naive one: ``loadtest.openloop`` at ``--rate`` from ``--connections`` keep-alive
connections (request i released at start + i/rate; p50/p99/p99.9 from each release), then a bisection
over fixed rates for the highest with p99 ≤ the SLO, no failure and ≥ 98 % of the rate achieved
(``harness.max_rate_within_slo``); then a closed loop on the same connections (the most requests/s at
any latency); memory: the largest one-process peak RSS and the trees' PSS per worker. The naive
peer is two orders of magnitude slower: its row is its best closed-loop throughput at 1, 2 and 4
connections. The load is real search queries (``harness.search_queries``: MIMICS-Manual Bing queries
and TREC Session queries, shuffled), the same list for the limit and every row; a query recurs only
after the whole pool, seconds later, so with the service's cache off nothing merges requests. The
limit is also measured once on ActivityNet caption sentences, to show what longer queries cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import harness as h
from benchmarks import vectors as bv
from benchmarks.limit import LimitPool
from benchmarks.stock_index import stock_bundle_path
from core.search_params import describe_point
from loadtest.querymix import load_mix
from loadtest.ready import wait_workers

CORES = 2  # the box: the limit runs one process pinned to each, the HTTP rows and their generator share them
ROWS = ("service", "nginx", "granian", "peer", "stock", "naive")
TITLES = {
    "service": "crops serve, 1 worker x 2 batch slots",
    "nginx": "nginx least_conn + 1 replica (1 worker x 2 batch slots)",
    "granian": "same app under granian, 1 worker x 2 batch slots",
    "peer": "strong peer (FastAPI + int8 ONNX + faiss), 2 workers",
    "stock": "stock peer (the same app, faiss HNSW32 at its defaults), 2 workers",
    "naive": "naive peer (sentence-transformers + Flat), 1 worker",
}


class Bodies:
    """Request bodies handed out in order, cycling through the pool: consecutive runs continue where
    the last one stopped, and a query recurs only after the whole pool (seconds later at any rate
    measured), never while an earlier copy is in flight."""

    def __init__(self, queries: list[str]) -> None:
        self.bodies = [json.dumps({"query": q}).encode() for q in queries]
        self.used = 0

    def take(self, n: int) -> list[bytes]:
        part = [self.bodies[(self.used + i) % len(self.bodies)] for i in range(n)]
        self.used = (self.used + n) % len(self.bodies)
        return part


@contextlib.contextmanager
def serving(name: str, bundle: Path, vec_path: Path | None, env: dict[str, str], logs: Path, *,
            max_conns: int | None = None, replicas: int = 1, workers: int = 1,
            tree: Path = h.ROOT) -> Iterator[tuple[str, list[int], int]]:
    """Start a row's server(s); yield (URL, the pids whose process trees are its memory, workers).
    ``max_conns``: the nginx row's per-replica limit instead of the shipped one; ``replicas``: its
    one-worker replicas; ``workers``: the service row's (each runs ``CROPS_BATCH_SLOTS`` batch slots);
    ``tree``: the checkout whose code the service row runs (another commit's worktree, to compare)."""
    py, port = sys.executable, h.free_port()
    url = f"http://127.0.0.1:{port}"

    def serve(p: int, workers: int) -> list[str]:
        return [py, "-m", "crops", "serve", "--bundle", str(bundle), "--port", str(p), "--workers", str(workers)]

    if name == "service":
        with h.server(serve(port, workers), port=port, name=name, env=env, log_dir=logs, cwd=tree) as proc:
            wait_workers(url, workers, timeout=900.0)  # every worker loaded, or the first seconds are uneven
            yield url, [proc.pid], workers
    elif name == "nginx":
        h.nginx_exe()  # not installed: the row is skipped before any replica starts
        ports = [h.free_port() for _ in range(replicas)]
        with contextlib.ExitStack() as stack:
            procs = [stack.enter_context(h.server(serve(p, 1), port=p, name=f"nginx-replica{i}", env=env,
                                                  log_dir=logs)) for i, p in enumerate(ports)]
            stack.enter_context(h.nginx(ports, port=port, log_dir=logs, max_conns=max_conns))
            yield url, [r.pid for r in procs], len(procs)
    elif name == "granian":
        cmd = [py, "-m", "granian", "--interface", "asgi", "--factory", "--workers", "1", "--host", "127.0.0.1",
               "--port", str(port), "--no-ws", "--log-level", "warning", "--working-dir", str(h.ROOT),
               "benchmarks.granian_app:create"]
        with h.server(cmd, port=port, name=name, env={**env, "CROPS_BUNDLE": str(bundle.resolve())},
                      log_dir=logs) as proc:
            yield url, [proc.pid], 1
    elif name in ("peer", "stock"):
        if name == "stock":
            bundle = stock_bundle_path(bundle)
            if not (bundle / "manifest.json").is_file():
                raise FileNotFoundError(f"no stock peer bundle at {bundle} (python -m benchmarks.stock_index)")
        cmd = [py, "-m", "benchmarks.strong_peer", "--bundle", str(bundle), "--port", str(port), "--workers", "2"]
        with h.server(cmd, port=port, name=name, env=env, log_dir=logs) as proc:
            yield url, [proc.pid], 2
    elif name == "naive":
        if vec_path is None:
            raise FileNotFoundError("the naive peer needs the indexed vectors (--vectors)")
        cmd = [py, "-m", "benchmarks.naive_peer", "--vectors", str(vec_path), "--port", str(port)]
        with h.server(cmd, port=port, name=name, env=env, log_dir=logs) as proc:
            yield url, [proc.pid], 1
    else:
        raise ValueError(f"unknown row {name!r} (rows: {', '.join(ROWS)})")


def http_row(name: str, url: str, bodies: Bodies, a: argparse.Namespace, *, ceiling: float, pids: list[int],
             workers: int) -> dict[str, Any]:
    """One server, measured: the fixed-rate point, the rate search, the closed loop, memory."""
    row: dict[str, Any] = {"name": name, "title": TITLES[name], "workers": workers, "connections": a.connections}
    h.measure_closed(url, bodies.take(1000), connections=2, seconds=3)  # warm-up; nothing left queued after it
    if name == "naive":
        points = [h.measure_closed(url, bodies.take(2000), connections=c, seconds=a.seconds) for c in (1, 2, 4)]
        best = max(points, key=lambda p: p["ok_rps"])
        row.update(closed_loop=points, best_closed_loop=best, max_rps_any_latency=best["ok_rps"],
                   max_rps_within_slo=None, at_rate=None, search=[])
        h.log(f"{name}: {best['ok_rps']} req/s at {best['connections']} connections (any latency)")
    else:
        def measure(rate: float) -> dict[str, Any]:
            need = int(rate * a.seconds) + 10
            return h.measure_open(url, bodies.take(need), rate=rate, seconds=a.seconds, connections=a.connections,
                                  server_pids=pids)

        found = h.max_rate_within_slo(measure, start=a.rate, ceiling=ceiling, slo_ms=a.slo_p99_ms, steps=a.steps,
                                      name=name)
        at = found["start"]
        h.log(f"{name}: {a.rate:g} req/s → p50 {at['p50_ms']} p99 {at['p99_ms']} p99.9 {at['p999_ms']} ms, "
              f"{at['failures']} failures, {at['rps']} achieved; best within the SLO {found['best']}")
        closed = h.measure_closed(url, bodies.take(int(ceiling * a.seconds * 1.5) + 100),
                                  connections=a.connections, seconds=a.seconds)
        row.update(at_rate=at, search=found["points"], max_rps_within_slo=found["best"], closed_loop=[closed],
                   max_rps_any_latency=closed["ok_rps"])  # answered requests/s: shed 503s are not throughput
    # Per worker: the largest single process's peak RSS (a worker: the supervisor of `crops serve` loads
    # the app once to fail fast, then frees it, so summing peaks over the tree would count that twice),
    # and the tree's PSS now (the supervisor's share included) divided by the workers.
    rss = sum(h.tree_peak_rss_mib(p) for p in pids)
    pss = sum(h.tree_pss_mib(p) for p in pids)
    row.update(peak_rss_mib=round(rss, 1), rss_mib_per_worker=max(h.largest_peak_rss_mib(p) for p in pids),
               pss_mib_per_worker=round(pss / workers, 1))
    return row


def limit_run(bundle: Path, queries: list[str], onnx_file: str | None, seconds: float) -> dict[str, Any]:
    with LimitPool(bundle, queries, cpus=list(range(CORES)), onnx_file=onnx_file) as pool:
        return pool.run(seconds, warmup_s=2.0)


def mean_words(queries: list[str]) -> float:
    """Words per query on average (the encoder's cost grows with the query's tokens)."""
    return round(statistics.mean(len(q.split()) for q in queries), 1) if queries else 0.0


def ratio(a: float | None, b: float | None, nd: int = 3) -> float | None:
    return round(a / b, nd) if a and b else None


def busiest_point(row: dict[str, Any]) -> dict[str, Any] | None:
    """The row's fixed-rate point with the most answers a second and its CPU measured (None: none)."""
    pts = [p for p in [row.get("at_rate"), *row.get("search", [])]
           if p and p.get("server_cores") is not None and p.get("ok_rps")]
    return max(pts, key=lambda p: p["ok_rps"]) if pts else None


def cpu_ms_per_request(row: dict[str, Any]) -> float | None:
    """The server processes' CPU per answered request at the row's busiest fixed-rate point (the most
    answers a second; CPU spent on refusals counts against the answers)."""
    top = busiest_point(row)
    return None if top is None else round(float(top["server_cores"]) * 1e3 / float(top["ok_rps"]), 2)


def cpu_ceiling_rps(row: dict[str, Any], cores: int) -> float | None:
    """The most answers a second ``cores`` could give at the row's CPU per answer, its server's and its
    load generator's together (they share the cores), with no queueing or idle time at all."""
    top = busiest_point(row)
    if top is None:
        return None
    per_answer = (float(top["server_cores"]) + float(top.get("generator_cores") or 0.0)) / float(top["ok_rps"])
    return round(cores / per_answer, 1)


def most_answered(row: dict[str, Any]) -> float | None:
    """The most answers a second a row gave at any latency: its closed loop or its busiest fixed rate."""
    points = [row.get("at_rate"), *row.get("search", [])]
    vals = [float(v) for v in [row.get("max_rps_any_latency"), *(p.get("ok_rps") for p in points if p)] if v]
    return max(vals) if vals else None


def peer_rate(row: dict[str, Any]) -> tuple[float | None, bool | None]:
    """A peer's rate for the ratios: (its max rate within the SLO, True), or, when no rate met the SLO,
    (the most it answered a second at any latency, False); (None, None) when the row did not run."""
    if not row:
        return None, None
    within = row.get("max_rps_within_slo")
    return (float(within), True) if within else (most_answered(row), False)


def summarize(rows: dict[str, dict[str, Any]], limits: list[dict[str, Any]], a: argparse.Namespace
              ) -> dict[str, Any]:
    """The flat numbers of bench.json from the rows.

    ``service_*``: the service as deployed, nginx in front of its replica (deploy/: compose and
    Kubernetes), when that row was measured; else ``crops serve`` alone. ``service_row`` says which;
    ``crops_serve_*`` are always the one-box process model's."""
    limit_rps = round(statistics.mean(x["rps"] for x in limits), 1)
    service_row = "nginx" if "nginx" in rows else "service"
    svc, peer, naive = rows.get(service_row, {}), rows.get("peer", {}), rows.get("naive", {})
    peer_rps, peer_within = peer_rate(peer)
    stock_rps, stock_within = peer_rate(rows.get("stock", {}))
    at = svc.get("at_rate") or {}
    one_box = rows.get("service", {})
    service_rps = svc.get("max_rps_within_slo")
    naive_rps = naive.get("max_rps_any_latency")
    return {
        "limit_rps": limit_rps,
        "service_row": service_row,
        "service_rps": service_rps,
        "connections": a.connections,
        "p99_ms_at_400": at.get("p99_ms"),
        "peer_rps": peer_rps,
        "peer_within_slo": peer_within,
        "naive_rps": naive_rps,
        "rss_mib_per_worker": svc.get("rss_mib_per_worker"),
        "pss_mib_per_worker": svc.get("pss_mib_per_worker"),
        "nginx_rps": rows.get("nginx", {}).get("max_rps_within_slo"),
        "granian_rps": rows.get("granian", {}).get("max_rps_within_slo"),
        "crops_serve_rps": one_box.get("max_rps_within_slo"),
        "crops_serve_p99_ms_at_400": (one_box.get("at_rate") or {}).get("p99_ms"),
        "service_p99_ms_at_400": at.get("p99_ms"),
        "service_p50_ms_at_400": at.get("p50_ms"),
        "service_rps_any_latency": svc.get("max_rps_any_latency"),
        "service_over_limit": ratio(service_rps, limit_rps),
        "service_over_limit_any_latency": ratio(svc.get("max_rps_any_latency"), limit_rps),
        "service_over_peer": ratio(service_rps, peer_rps, 2),
        "stock_peer_rps": stock_rps,
        "stock_peer_within_slo": stock_within,
        "service_over_stock_peer": ratio(service_rps, stock_rps, 2),
        "service_over_naive": ratio(service_rps, naive_rps, 1),
        "service_over_naive_any_latency": ratio(svc.get("max_rps_any_latency"), naive_rps, 1),
        "peak_rss_mib": {"limit": limits[0].get("peak_rss_mib"), **{k: r.get("peak_rss_mib") for k, r in rows.items()}},
        # Where the cores went at the fixed rate: the serving path alone needs rate x (cores / limit).
        "compute_cores_at_rate": round(a.rate * CORES / limit_rps, 3),
        "service_cores_at_rate": at.get("server_cores"),
        "generator_cores_at_rate": at.get("generator_cores"),
        # CPU per request: the tight loop's (cores / the limit) against each HTTP row's, measured
        "limit_cpu_ms_per_query": round(CORES * 1e3 / limit_rps, 2),
        "cpu_ms_per_request": {k: ms for k, r in rows.items() if (ms := cpu_ms_per_request(r)) is not None},
        # What the CPU alone allows: a ratio to the limit above this ceiling's cannot be reached by any
        # scheduling, only by spending less CPU per answer.
        "cpu_ceiling_rps": {k: c for k, r in rows.items() if (c := cpu_ceiling_rps(r, CORES)) is not None},
    }


def stock_desc(info: dict[str, Any] | None) -> str:
    """The stock peer's index in words, for the report."""
    if not info:
        return "not measured"
    build = f"efConstruction {info['ef_construction']}" if info.get("ef_construction") else "faiss' default build"
    return (f"{info['factory']} at {build}, efSearch {info['ef_search']}, "
            f"recall@100 {info['recall_at_100']} ({info['recall_how']})")


def render_markdown(result: dict[str, Any]) -> str:
    """The report: headline table, what each number means, the machine, each row's rate search."""
    f, m, idx, slo = h.fmt, result["machine"], result["index"], result["slo_p99_ms"]
    rate, lim = result["fixed_rate"], result["limit"]
    rows: dict[str, dict[str, Any]] = result["rows"]
    table = [["in-process limit", "2 processes, one pinned per core, no HTTP", f"{f(lim[0]['p50_ms'], 2)} / "
              f"{f(lim[0]['p99_ms'], 2)} / –", "–", f(result["limit_rps"]), "1.000", "–", "–",
              f(round(lim[0]["peak_rss_mib"] / 2, 1)), "–"]]
    for name, r in sorted(rows.items(), key=lambda kv: ROWS.index(kv[0]) if kv[0] in ROWS else len(ROWS)):
        at = r.get("at_rate") or {}
        pct = f"{f(at.get('p50_ms'), 2)} / {f(at.get('p99_ms'), 2)} / {f(at.get('p999_ms'), 2)}" if at else "–"
        best = r.get("max_rps_within_slo")
        fixed = [x["ok_rps"] for x in [at, *r.get("search", [])] if x and "ok_rps" in x]
        table.append([name, r["title"], pct, at.get("failures", "–") if at else "–",
                      f(best) if best is not None else ("none" if at else "–"),
                      f(ratio(best, result["limit_rps"]), 3), f(max(fixed)) if fixed else "–",
                      f(r.get("max_rps_any_latency")),
                      f(r.get("rss_mib_per_worker")), f(r.get("pss_mib_per_worker"))])
    for name, why in {**result.get("skipped", {}), **result.get("failed", {})}.items():
        table.append([name, TITLES.get(name, name), f"not measured: {why}", "", "", "", "", "", "", ""])
    nv = rows.get("naive", {}).get("best_closed_loop")
    ceiling = (result.get("cpu_ceiling_rps") or {}).get(result.get("service_row", "service"))
    ceiling_ms = CORES * 1e3 / (0.9 * result["limit_rps"])
    lines = [
        "# Benchmark: the in-process limit, the service and its peers",
        "",
        f"{result['started']} · {h.describe_machine(m)} · {m['mem_gib']} GiB · kernel {m['kernel']} · "
        f"git {m['git']}",
        "",
        f"Index: {idx['factory']} over {idx['ntotal']:,} vectors ({idx['vectors']}), "
        f"{describe_point(idx['nprobe'], idx['k_factor'], idx.get('ef_search'))}, "
        f"tuned on {result.get('tuning_queries', 'the mix')}; recall@100 vs exact "
        f"{f(result['recall_at_100'], 4)} ({result['recall_how']}). Encoder: {result['encoder']}. "
        f"Load queries: {result['queries']}.",
        "",
        *h.markdown_table(
            ["row", "what", f"p50 / p99 / p99.9 ms at {rate:g} req/s", "failures",
             f"max req/s, p99 ≤ {slo:g} ms", "÷ limit", "most answered req/s, fixed rates",
             "answered req/s, closed loop", "RSS MiB / worker",
             "PSS MiB / worker"], table),
        "",
        f"- **service / limit = {f(result['service_over_limit'], 3)}** within the SLO (goal ≥ 0.9); the service "
        f"is the `{result.get('service_row', 'service')}` row"
        + (" (the deployed topology: nginx in front of a replica, one worker x 2 batch slots per 2 cores)"
           if result.get("service_row") == "nginx" else " (nginx not measured: `crops serve` alone)")
        + "; "
        f"service / strong peer = {f(result['service_over_peer'], 2)}"
        + ("" if result.get("peer_within_slo") in (True, None) else
           " (the strong peer's most answers a second at any latency: no rate met the SLO)")
        + "; "
        + (f"service / stock peer = {f(result['service_over_stock_peer'], 2)} (the stock peer's "
           + ("rate within the SLO" if result.get("stock_peer_within_slo") else
              "most answers a second at any latency: no rate met the SLO")
           + f"; its index: {stock_desc(result.get('stock_index'))}); " if result.get("stock_peer_rps") else "")
        + f"service / naive = {f(result['service_over_naive'], 1)}× (goal ≥ 10×; the naive peer's number is "
        f"its best closed loop at any latency"
        + (f", {nv['connections']} connections, p99 {f(nv['p99_ms'])} ms" if nv else "") + ").",
        f"- **Cores at {rate:g} req/s** (of {m['cores']}): encode + search alone need "
        f"{f(result.get('compute_cores_at_rate'), 2)} ({rate:g} × {m['cores']} / the limit); the service's "
        f"processes used {f(result.get('service_cores_at_rate'), 2)} and the load generator "
        f"{f(result.get('generator_cores_at_rate'), 2)}. Each row's fixed-rate table below has its own split.",
        f"- **CPU per request**: the limit's loop spends {f(result.get('limit_cpu_ms_per_query'), 2)} ms a query; "
        "over HTTP, at each row's busiest fixed-rate point, the server's processes spent "
        + ", ".join(f"{k} {f(v, 2)}" for k, v in (result.get("cpu_ms_per_request") or {}).items())
        + f" ms an answered request, so {rate:g} answers a second would need "
        + ", ".join(f"{f(v * rate / 1e3, 2)}" for v in (result.get("cpu_ms_per_request") or {}).values())
        + f" of the {m['cores']} cores.",
        f"- **CPU ceiling**: at each row's CPU per answer, its server's and its load generator's together, "
        f"the {CORES} cores could answer at most "
        + ", ".join(f"{k} {f(v)}" for k, v in (result.get("cpu_ceiling_rps") or {}).items())
        + f" req/s, with no queueing and no idle core at all: the `{result.get('service_row', 'service')}` row's "
        f"ceiling is {f(ratio(ceiling, result['limit_rps']), 3)} × the limit. A ratio to the limit above the "
        f"ceiling's cannot come from scheduling, only from less CPU per answer: 0.9 × the limit needs "
        f"≤ {f(ceiling_ms, 2)} ms an answer, server and generator together.",
        f"- The limit: {f(lim[0]['rps'])} req/s before the HTTP rows, "
        + (f"{f(lim[1]['rps'])} after" if len(lim) > 1 else "not measured after")
        + "; the ratios use their mean."
        + (f" On ActivityNet caption sentences instead of search queries ({f(result['caption_limit'].get('words'))} "
           f"words a query on average against {f(result.get('load_words'))}) the limit is "
           f"{f(result['caption_limit']['rps'])} req/s: the encoder's cost grows with the query."
           if result.get("caption_limit") else ""),
        f"- Cores: {result['core_split']}",
        f"- Other processes used {f(result['other_cores_at_start'], 2)} cores in a 2 s sample at the start "
        f"(load average 1/5/15 min at start {result['loadavg_start']}, at end {result['loadavg_end']}): "
        + ("the machine was shared with other jobs, so the numbers are noisy; rerun on an idle box."
           if result["noisy"] else "the machine was otherwise idle."),
        f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}, python {m['python']}.",
        f"- Reproduce: `{result['command']}`",
        "",
        "![benchmark](bench.png)",
        "",
        "## Method",
        "",
        "- **limit** (`benchmarks/limit.py`): normalise, tokenise, ONNX encode (1 intra-op thread), faiss search "
        "(1 thread, the bundle's tuned search point), id lookup, in a loop, one process pinned per core; "
        "requests/s summed over both.",
        f"- **HTTP rows**: `loadtest.openloop`, open loop: request i is released at start + i / rate whatever "
        f"the answers, over {result['connections']} keep-alive connections, latency from the release "
        "(including any wait for a free connection). The first second of each "
        f"{result['seconds']:g} s point is left out. Max rate within the SLO: the highest fixed rate with p99 ≤ "
        f"{slo:g} ms, no failure and ≥ 98 % of the rate achieved, by bisection from {rate:g} req/s "
        "(`benchmarks.harness.max_rate_within_slo`). Most answered at fixed rates: the highest goodput over those "
        "points (successful answers that arrived within the point, whenever sent). Answered in a closed loop: a "
        "closed loop on the same connections "
        "(each sends again as soon as it is answered), counting answered requests only. A server that sheds "
        "answers a 503 in about a millisecond and this client sends again at once without honouring "
        "Retry-After, so on a shedding row the closed loop is a retry storm that spends the cores on refusals: "
        "read that row's capacity from the fixed-rate points.",
        "- **memory**: RSS per worker is the largest peak RSS (VmHWM) of one process of the row (a worker; "
        "shared pages counted in full); PSS per worker is the PSS of the server's process trees (supervisor "
        "included) at the end, divided by the workers.",
        "- Every row runs alone, one after another, on the same machine, bundle and queries (the limit "
        "too): the pool of search queries in one shuffled order, cycled, so a query recurs only after the "
        "whole pool, seconds later, and no cache or single-flight merges requests (the service's cache is off).",
        "",
    ]
    for name, r in sorted(rows.items(), key=lambda kv: ROWS.index(kv[0]) if kv[0] in ROWS else len(ROWS)):
        pts = ([r["at_rate"]] if r.get("at_rate") else []) + r.get("search", [])
        if pts:
            lines += [f"### {name}: fixed-rate points ({result['seconds']:g} s each)", "",
                      *h.markdown_table(["rate", "achieved", "p50 ms", "p99 ms", "p99.9 ms", "failures", "within SLO",
                                         "server cores", "generator cores"],
                                        [[f(p["rate"], 0), f(p["rps"]), f(p["p50_ms"], 2), f(p["p99_ms"], 2),
                                          f(p["p999_ms"], 2), p["failures"], "yes" if p["within_slo"] else "no",
                                          f(p.get("server_cores"), 2), f(p.get("generator_cores"), 2)]
                                         for p in pts]), ""]
        closed = r.get("closed_loop", [])
        if closed:
            lines += [f"### {name}: closed loop", "",
                      *h.markdown_table(["connections", "requests/s", "p50 ms", "p99 ms", "failures"],
                                        [[p["connections"], f(p["rps"]), f(p["p50_ms"], 2), f(p["p99_ms"], 2),
                                          p["failures"]] for p in closed]), ""]
    return "\n".join(lines)


def figure(result: dict[str, Any]) -> Any:
    """Throughput per row (within the SLO and at any latency) and p99 against the offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[str, dict[str, Any]] = result["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = ["limit", *rows]
    within = [result["limit_rps"], *((r.get("max_rps_within_slo") or 0.0) for r in rows.values())]
    anyl = [result["limit_rps"], *((r.get("max_rps_any_latency") or 0.0) for r in rows.values())]
    xs = range(len(names))
    ax1.bar([x - 0.2 for x in xs], within, 0.4, label=f"p99 ≤ {result['slo_p99_ms']:g} ms", color="tab:blue")
    ax1.bar([x + 0.2 for x in xs], anyl, 0.4, label="any latency (closed loop)", color="lightsteelblue")
    for x, v in zip(xs, within, strict=True):
        ax1.text(x - 0.2, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax1.set_xticks(list(xs), names, fontsize=8)
    ax1.set_ylabel("requests/s")
    ax1.set_title("throughput")
    ax1.legend(fontsize=7)
    for name, r in rows.items():
        pts = sorted(([r["at_rate"]] if r.get("at_rate") else []) + r.get("search", []), key=lambda p: p["rate"])
        if pts:
            ax2.plot([p["rate"] for p in pts], [p["p99_ms"] for p in pts], "o-", label=name)
    ax2.axhline(result["slo_p99_ms"], color="red", lw=0.8, label="SLO")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered requests/s (open loop)")
    ax2.set_ylabel("p99 ms")
    ax2.set_title(f"p99 against the rate ({result['connections']} connections)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def operating_point(bundle: Path, search: str, work: Path) -> Path:
    """A copy of ``bundle`` whose manifest serves another point of its tuning curve: ``NPROBE/K_FACTOR``
    (IVF + refine) or ``EF`` (HNSW efSearch); the manifest's recall is that point's recall on the
    tuning queries (the bench measures held-out)."""
    from core.manifest import read_manifest, write_manifest

    parts = search.split("/")
    try:
        if len(parts) == 1:
            nprobe, k_factor, ef = None, None, int(parts[0])
        else:
            nprobe, k_factor, ef = int(parts[0]), float(parts[1]), None
    except ValueError:
        raise SystemExit(
            f"error: --search wants NPROBE/K_FACTOR (IVF, e.g. 32/8) or EF (HNSW, e.g. 512), not {search!r}"
        ) from None
    man = read_manifest(bundle)
    if man.index is None or not man.index.curve_json:
        raise SystemExit(f"error: {bundle} has no tuned index (no tuning curve) to pick a point from")
    curve = json.loads((bundle / man.index.curve_json).read_text())["points"]
    point = next((p for p in curve if p["nprobe"] == nprobe and p["k_factor"] == k_factor
                  and p.get("ef_search") == ef), None)
    if point is None:
        raise SystemExit(f"error: {search} is not on {bundle}'s tuning curve")
    target = work / (f"{bundle.name}_ef{ef}" if ef is not None else f"{bundle.name}_np{nprobe}_k{k_factor:g}")
    if not target.is_dir():
        shutil.copytree(bundle, target)
    man.index.nprobe, man.index.k_factor, man.index.ef_search = nprobe, k_factor, ef
    man.index.recall_at_100 = point["recall"]
    man.index.recall_at_100_report, man.index.target_met = None, point["recall"] >= (man.index.target_recall or 0)
    write_manifest(target, man)
    return target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the bench index")
    ap.add_argument("--quick", action="store_true", help="100k vectors, 5 s points, 3 search steps")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per point (default 10, --quick 5)")
    ap.add_argument("--rate", type=float, default=400.0, help="the fixed-rate point (req/s)")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections of the load generator")
    ap.add_argument("--slo-p99-ms", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=None, help="bisection points after the first (default 4)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"HTTP rows to run, of {','.join(ROWS)}")
    ap.add_argument("--bundle", type=Path, default=None, help="a complete bundle to measure instead of the bench's")
    ap.add_argument("--vectors", type=Path, default=None, help=".npy of --bundle's vectors (naive peer, recall)")
    ap.add_argument("--model-bundle", type=Path, default=None, help="exported model bundle to index")
    ap.add_argument("--base-bundle", type=Path, default=None,
                    help="base embeddings from this bundle's Flat index instead of encoding the catalog")
    ap.add_argument("--factory", default=None, help="faiss factory (default: the index builder's choice)")
    ap.add_argument("--target-recall", type=float, default=0.96,
                    help="recall@100 tuned for on the tuning queries (a margin over the 0.95 goal, checked on others)")
    ap.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto",
                    help="encoder variant for the limit and the service (auto: int8 when the bundle has it)")
    ap.add_argument("--work", type=Path, default=h.RUNS, help="bench bundles, vectors and server logs")
    ap.add_argument("--search", default=None, metavar="NPROBE/K_FACTOR or EF",
                    help="serve another point of the bundle's tuning curve (a copy of the bundle), e.g. 32/8")
    ap.add_argument("--prepare-only", action="store_true", help="build the bench bundle and vectors, then stop")
    ap.add_argument("--out", type=Path, default=None, help="report path (default BUNDLE_results/bench.md)")
    ap.add_argument("--publish", action="store_true", help="also write docs/results/bench.md, .json, .png")
    a = ap.parse_args(argv)
    if a.quick and a.n == 1_000_000:
        a.n = 100_000
    a.seconds = a.seconds or (5.0 if a.quick else 10.0)
    a.steps = a.steps if a.steps is not None else (3 if a.quick else 4)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) must unwind through the servers' cleanup, or they stay.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python -m benchmarks.fleet " + " ".join(sys.argv[1:] if argv is None else argv)
    # Tune and measure recall on real queries (half the MIMICS Bing queries each) when the public data
    # is there: recall tuned on generated queries overstated it on real ones (docs/results/real_query_recall.md).
    real = bv.real_query_split()
    if real is not None:
        tune, held_out, tune_source = real
    else:
        tune, held_out, tune_source = bv.tuning_texts(load_mix(None).queries), [], "queries of the generated mix"
    work = a.work / f"n{a.n}"
    if a.bundle:
        bundle, vec_path, vec_desc = a.bundle, a.vectors, f"given ({a.vectors or 'vectors not given'})"
    else:
        model = bv.ensure_model_bundle(a.model_bundle, a.work)
        bundle, vec_path, vec_desc = bv.ensure_bench_bundle(a.n, model, work, tune, base_bundle=a.base_bundle,
                                                            factory=a.factory, target_recall=a.target_recall,
                                                            tune_source=tune_source)
    if a.search:
        bundle = operating_point(bundle, a.search, work if not a.bundle else bundle.parent)
    if a.prepare_only:
        h.log(f"prepared {bundle} ({vec_desc})")
        return 0
    from core.manifest import verify_bundle

    man = verify_bundle(bundle, require_index=True)
    assert man.model is not None and man.index is not None
    variants = man.model.variants
    precision = a.precision if a.precision != "auto" else ("int8" if "int8" in variants else "fp32")
    if precision != "fp32" and precision not in variants:
        raise SystemExit(f"error: the bundle has no {precision} encoder variant")
    onnx_file = variants[precision].file if precision in variants else None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start, others = os.getloadavg(), h.other_processes_cores()
    wanted = [r.strip() for r in a.rows.split(",") if r.strip()]
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        raise SystemExit(f"error: unknown rows {unknown} (rows: {', '.join(ROWS)})")

    queries, q_desc = h.search_queries()
    recall: float | None
    recall_mix: float | None = None
    if vec_path is not None:
        h.log("measuring recall@100 vs exact search on held-out queries")
        recall_mix, mix_n = bv.measured_recall(bundle, vec_path, queries, set(tune))
        if held_out:
            recall, recall_n = bv.measured_recall(bundle, vec_path, held_out, set(tune), n_q=len(held_out))
            recall_how = (f"on {recall_n} real queries (MIMICS-Manual) no tuning saw; on {mix_n} of the "
                          f"load queries, none of them a tuning query: {recall_mix}")
        else:
            recall, recall_n = recall_mix, mix_n
            recall_how = f"on {recall_n} of the load queries, none of them a tuning query"
    else:
        recall, recall_n = man.index.recall_at_100_report or man.index.recall_at_100, 0
        recall_how = "the manifest's, no vectors given"

    stock_index = None
    stock = stock_bundle_path(bundle)
    if "stock" in wanted and (stock / "manifest.json").is_file():
        sm = verify_bundle(stock, require_index=True).index
        assert sm is not None
        if vec_path is not None and held_out:
            s_recall, s_n = bv.measured_recall(stock, vec_path, held_out, set(tune), n_q=len(held_out))
            s_how = f"on the same {s_n} held-out real queries"
        else:
            s_recall, s_how = sm.recall_at_100_report or sm.recall_at_100 or 0.0, "the manifest's"
        stock_index = {"factory": sm.factory, "ef_search": sm.ef_search, "recall_at_100": s_recall,
                       "recall_how": s_how, "ef_construction": getattr(sm, "ef_construction", None)}
        h.log(f"stock peer index: {stock_desc(stock_index)}")

    h.log(f"limit: 2 processes pinned to cores 0 and 1, {a.seconds:g} s")
    limits = [limit_run(bundle, queries, onnx_file, a.seconds)]
    h.log(f"limit: {limits[0]['rps']} req/s (p99 {limits[0]['p99_ms']} ms)")
    env = h.server_env(CROPS_ENCODER_PRECISION=precision)
    logs = a.work / "logs"
    rows: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    bodies = Bodies(queries)
    for name in wanted:
        try:
            with serving(name, bundle, vec_path, env, logs) as (url, pids, workers):
                rows[name] = http_row(name, url, bodies, a, ceiling=float(limits[0]["rps"]), pids=pids,
                                      workers=workers)
        except FileNotFoundError as exc:  # nginx not installed, no vectors for the naive peer
            h.log(f"{name}: skipped: {exc}")
            skipped[name] = str(exc)
        except Exception as exc:  # one server failing must not lose the other rows
            h.log(f"{name}: failed: {exc}")
            failed[name] = f"{type(exc).__name__}: {exc}"
    limits.append(limit_run(bundle, queries, onnx_file, a.seconds))
    h.log(f"limit again: {limits[1]['rps']} req/s")
    captions = h.set_queries("activitynet")
    caption_limit = limit_run(bundle, captions, onnx_file, a.seconds) if captions else None
    if caption_limit:
        caption_limit["words"] = mean_words(captions)
        h.log(f"limit on {len(captions)} caption sentences: {caption_limit['rps']} req/s")

    result: dict[str, Any] = {
        **summarize(rows, limits, a),
        "recall_at_100": recall,
        "recall_queries": recall_n,
        "recall_how": recall_how,
        "recall_at_100_load_queries": recall_mix,
        "stock_index": stock_index,
        "tuning_queries": tune_source,
        "n": man.index.ntotal,
        "seconds": a.seconds,
        "fixed_rate": a.rate,
        "slo_p99_ms": a.slo_p99_ms,
        "service_workers": rows.get("service", {}).get("workers"),
        "encoder": f"{precision} ({onnx_file or man.model.query_onnx})",
        "queries": q_desc,
        "index": {"factory": man.index.factory, "ntotal": man.index.ntotal, "nprobe": man.index.nprobe,
                  "k_factor": man.index.k_factor, "ef_search": man.index.ef_search,
                  "manifest_recall_at_100": man.index.recall_at_100,
                  "vectors": vec_desc, "bundle": str(bundle)},
        "core_split": "limit: one process pinned to each of cores 0 and 1. HTTP rows: the servers' workers are "
                      "not pinned (the scheduler places them); the load generator (one Python process, uvloop) "
                      "shares the same cores, as a ranking service's sidecar would not, so every HTTP row pays "
                      "for its own load generator alike.",
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "other_cores_at_start": others,
        "noisy": others > 0.25,
        "started": started,
        "command": command,
        "machine": h.machine_info(),
        "limit": limits,
        "caption_limit": caption_limit,
        "load_words": mean_words(queries),
        "skipped": skipped,
        "failed": failed,
        "rows": rows,
    }
    out = a.out or Path(str(bundle).rstrip("/") + "_results") / "bench.md"
    md, fig = render_markdown(result), figure(result)
    targets = [out] + ([h.ROOT / "docs" / "results" / "bench.md"] if a.publish else [])
    for target in targets:
        for path in h.write_report(target, md, result, figure=fig):
            h.log(f"wrote {path}")
    keys = ("limit_rps", "service_rps", "connections", "p99_ms_at_400", "peer_rps", "naive_rps",
            "rss_mib_per_worker", "recall_at_100")
    print(json.dumps({k: result[k] for k in keys}))
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    h.log(f"done in {time.monotonic() - t0:.0f} s")
    sys.exit(rc)
