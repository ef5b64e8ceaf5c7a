"""Overload and process-model benchmarks of the service (real `crops serve` processes, real HTTP).

``overload``: measure capacity (closed loop, 32 keep-alive connections, every query a cache miss, a
deadline no request hits), then offer ``--factor`` × capacity open-loop (requests sent on schedule
whatever happened before, over ``--connections`` keep-alive connections, as a ranking fleet does) to
a server running with its deadline = the SLO. It reports goodput against capacity, the latency of the
admitted requests, how fast the excess is refused (measured at the client) and whether every refusal
is a 503 with Retry-After; markdown + JSON + PNG under ``--out``. ``--front nginx`` puts
deploy/nginx/nginx.conf (least_conn, ``max_conns`` per replica: the first line of shedding) in front of
``--replicas`` one-worker `crops serve` replicas; the capacity ramp runs without ``max_conns`` (the
replicas' own deadline-aware admission only), the overload run with it.

``process-models``: one run, same load (closed loop, 32 connections, cache misses), three ways to put
two worker processes on this box: `crops serve --workers 2` (uvicorn's workers, one shared socket),
nginx least_conn in front of two one-worker replicas (deploy/nginx/nginx.conf), and, when
``--old-tree`` points at a checkout that still has it, the removed home-made least-conn dispatcher.

The HTTP client is ``benchmarks.overload_client``, the markdown and figure ``benchmarks.overload_report``;
servers, nginx and the report files come from ``benchmarks.harness`` (server logs under runs/perf/).

    python -m benchmarks.overload overload --bundle runs/b --out docs/results/overload
    python -m benchmarks.overload overload --bundle runs/b --front nginx --max-conns 2,4,6 --out docs/results/overload
    python -m benchmarks.overload process-models --bundle runs/b --old-tree /tmp/old --out docs/results/process_models
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/overload.py` (how some reports were made)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import harness as h
from benchmarks.overload_client import Shot, closed_loop, open_loop, pct, request_bodies, run, summarize
from benchmarks.overload_report import figure, render_md


def serve(stack: contextlib.ExitStack, bundle: Path, workers: int, env: dict[str, str], *, name: str, nice: int = 0,
          tree: Path | None = None, extra: Sequence[str] = ()) -> int:
    """A `crops serve` (from this tree, or from ``tree`` when given) run on ``stack`` with ``env`` and no
    other ``CROPS_*`` setting; its port, once ``/readyz`` answers and every worker has loaded. Its log:
    runs/perf/NAME.log."""
    port = h.free_port()
    env = h.server_env(isolated=True, **env, **({"PYTHONPATH": str(tree)} if tree is not None else {}))
    cmd = [*(["nice", "-n", str(nice)] if nice else []), sys.executable, "-m", "crops", "serve",
           "--bundle", str(bundle), "--port", str(port), "--workers", str(workers), *extra]
    stack.enter_context(h.server(cmd, port=port, name=name, env=env, cwd=tree or h.ROOT, ready_timeout=180.0))
    time.sleep(2.0 * workers)  # every worker loaded
    return port


def process_env(a: argparse.Namespace) -> dict[str, str]:
    """The ``CROPS_*`` settings the command line asks of every server (precision, batch slots)."""
    env = {}
    if a.precision:
        env["CROPS_ENCODER_PRECISION"] = a.precision
    if a.batch_slots is not None:
        env["CROPS_BATCH_SLOTS"] = str(a.batch_slots)
    return env


def deployed_max_conns() -> int:
    """The ``max_conns`` of deploy/nginx/nginx.conf's upstream server line (0: none)."""
    m = re.search(r"server crops:8000 [^;]*max_conns=(\d+)", h.NGINX_CONF.read_text())
    return int(m.group(1)) if m else 0


class Front:
    """What the load generator talks to (``url``): one `crops serve --workers N`, or (``--front nginx``)
    nginx (deploy/nginx/nginx.conf, one worker process) in front of ``--replicas`` one-worker `crops
    serve` replicas. A context manager: everything stops on exit, nginx first."""

    def __init__(self, a: argparse.Namespace, env: dict[str, str], max_conns: int = 0) -> None:
        self.replicas = contextlib.ExitStack()
        self.edge = contextlib.ExitStack()  # nginx, restarted by limit()
        self.ports: list[int] = []
        try:
            if a.front == "nginx":
                h.nginx_exe()
                self.ports = [serve(self.replicas, a.bundle, 1, env, name=f"overload-replica{i}", nice=a.server_nice)
                              for i in range(a.replicas)]
                self.limit(max_conns)
            else:
                port = serve(self.replicas, a.bundle, a.workers, env, name="overload-serve", nice=a.server_nice)
                self.url = f"http://127.0.0.1:{port}"
        except BaseException:
            self.stop()
            raise

    def limit(self, max_conns: int) -> None:
        """nginx (re)started with ``max_conns`` per replica (0: none); the replicas keep running."""
        if self.ports:
            self.edge.close()
            port = h.free_port()
            self.edge.enter_context(h.nginx(self.ports, port=port, max_conns=max_conns, worker_processes=1,
                                            name="overload-nginx"))
            self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.edge.close()
        self.replicas.close()

    def __enter__(self) -> Front:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def overload(a: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Capacity (closed loop, then the open-loop ramp within the SLO), then the overload run once per
    nginx ``max_conns``; the headline result and its figure."""
    base = {"CROPS_CACHE": "none", "CROPS_GC_FREEZE": "true", "CROPS_MAX_BATCH": str(a.max_batch), **process_env(a)}
    limits: list[int | None] = [None]
    if a.front == "nginx":
        limits = [deployed_max_conns()] if a.max_conns is None else [int(x) for x in a.max_conns.split(",")]
    h.log(f"throughput: closed loop, {a.connections_capacity} connections, {a.capacity_s:g} s, cache misses")
    with Front(a, {**base, "CROPS_DEADLINE_MS": "10000", "CROPS_MAX_QUEUE": "100000"}) as srv:
        run(closed_loop(srv.url, a.connections_capacity, 2.0, seed=1))  # warm-up
        cap_shots = run(closed_loop(srv.url, a.connections_capacity, a.capacity_s, seed=2))
    closed = summarize(cap_shots, a.capacity_s)
    h.log(f"  {closed['goodput_rps']} req/s (p50 {closed['ok_p50_ms']} ms, p99 {closed['ok_p99_ms']} ms)")
    # Capacity = the highest open-loop rate served within the SLO (p99 <= SLO, < 1 % shed, all of it served).
    ramp: list[dict[str, Any]] = []
    capacity = 0.0
    runs: list[tuple[dict[str, Any], list[Shot]]] = []
    with Front(a, {**base, "CROPS_DEADLINE_MS": str(a.slo_ms)}) as srv:
        run(open_loop(srv.url, 0.3 * closed["goodput_rps"], 2.0, a.connections, seed=3))  # warm-up
        for i, f in enumerate((0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)):
            rate = f * closed["goodput_rps"]
            shots, _ = run(open_loop(srv.url, rate, a.ramp_s, a.connections, seed=10 + i))
            s = summarize(shots, a.ramp_s)
            ok = s["ok_p99_ms"] <= a.slo_ms and s["shed"] <= 0.01 * s["sent"] and s["ok"] >= 0.97 * s["sent"]
            ramp.append({"rate": round(rate, 1), **s, "within_slo": ok})
            h.log(f"  ramp {rate:6.1f} req/s: goodput {s['goodput_rps']:6.1f}, p99 {s['ok_p99_ms']:7.2f} ms, "
                  f"shed {s['shed']}  {'ok' if ok else 'over'}")
            if not ok:
                break
            capacity = s["goodput_rps"]
        if capacity <= 0:
            h.log(f"  no rate meets p99 <= {a.slo_ms:g} ms here: overload run at 3x the lowest ramp rate")
        rate = a.factor * (capacity or ramp[0]["rate"])
        for k, limit in enumerate(limits):
            if limit is not None:
                srv.limit(limit)
                h.log(f"nginx: max_conns={limit} per replica")
                run(open_loop(srv.url, 0.3 * closed["goodput_rps"], 2.0, a.connections, seed=5))  # warm-up
            h.log(f"overload: open loop at {rate:.0f} req/s for {a.duration:g} s, {a.connections} connections")
            shots, lag_p99 = run(open_loop(srv.url, rate, a.duration, a.connections, seed=40 + k))
            one = summarize(shots, a.duration)
            one.update(
                {
                    "max_conns": limit,
                    "generator_lag_p99_ms": round(lag_p99, 2),
                    "goodput_over_capacity": round(one["goodput_rps"] / capacity, 3) if capacity else None,
                    "verdict": {
                        "goodput >= 0.9 x capacity": bool(capacity) and one["goodput_rps"] >= 0.9 * capacity,
                        "admitted p99 <= 2 x SLO": one["ok_p99_ms"] <= 2 * a.slo_ms,
                        "shed p99 < 5 ms": one["shed_p99_ms"] < 5.0,
                        "every 503 has Retry-After": one["shed_with_retry_after"] == one["shed"],
                        "no other status": not one["other"],
                    },
                }
            )
            h.log(f"  goodput {one['goodput_rps']} req/s ({one['goodput_over_capacity']} x capacity), admitted p99 "
                  f"{one['ok_p99_ms']} ms, shed {one['shed']} p50/p99 {one['shed_p50_ms']}/{one['shed_p99_ms']} ms")
            runs.append((one, shots))
    # With several max_conns (a sizing sweep) the headline is the one meeting most goals, then the most goodput;
    # every run is in the report.
    res, shots = max(runs, key=lambda r: (sum(r[0]["verdict"].values()), r[0]["goodput_rps"]))
    res = dict(res)
    res.update(
        {
            "capacity_rps": capacity,
            "closed_loop": closed,
            "ramp": ramp,
            "ramp_s": a.ramp_s,
            "offered_rps": round(rate, 1),
            "factor": a.factor,
            "slo_ms": a.slo_ms,
            "workers": a.workers,
            "front": a.front,
            "replicas": a.replicas if a.front == "nginx" else None,
            "batch_slots": a.batch_slots,
            "precision": a.precision or "fp32",
            "bundle": str(a.bundle),
            "server_nice": a.server_nice,
            "connections": a.connections,
            "duration_s": a.duration,
            "sweep": [r for r, _ in runs] if len(runs) > 1 else [],
            "nproc": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    )
    return res, figure(shots, res)


def process_models(a: argparse.Namespace) -> tuple[dict[str, Any], None]:
    """All three set up at once (idle ones cost nothing), then measured in turn, round by round, so that
    the shared box's drifting load falls on all of them alike."""
    base = {
        "CROPS_CACHE": "none",
        "CROPS_DEADLINE_MS": "10000",
        "CROPS_MAX_QUEUE": "100000",
        "CROPS_MAX_IN_FLIGHT": "100000",
    }
    rows: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        port = serve(stack, a.bundle, 2, base, name="process-models-uvicorn")
        setups = [("crops serve --workers 2 (uvicorn)", f"http://127.0.0.1:{port}")]
        reps = [serve(stack, a.bundle, 1, base, name=f"process-models-replica{i}") for i in range(2)]
        port = h.free_port()
        stack.enter_context(h.nginx(reps, port=port, max_conns=0, worker_processes=1, name="process-models-nginx"))
        setups.append(("nginx least_conn + 2 x crops serve", f"http://127.0.0.1:{port}"))
        if a.old_tree is not None:
            port = serve(stack, a.bundle, 2, base, name="process-models-old", tree=a.old_tree,
                         extra=["--balance", "least-conn"])
            setups.append(("old dispatcher (--balance least-conn)", f"http://127.0.0.1:{port}"))
        for _, url in setups:
            run(closed_loop(url, a.connections_capacity, 2.0, seed=11))
        for rnd in range(a.rounds):
            for name, url in setups:
                shots = run(closed_loop(url, a.connections_capacity, a.capacity_s, seed=20 + rnd))
                s = summarize(shots, a.capacity_s)
                rows.setdefault(name, []).append(s)
                h.log(f"  {name:40s} round {rnd}: {s['goodput_rps']:7.1f} req/s  p50 {s['ok_p50_ms']:6.2f} ms  "
                      f"p99 {s['ok_p99_ms']:7.2f} ms  errors {s['sent'] - s['ok']}")
    means = {k: round(sum(s["goodput_rps"] for s in v) / len(v), 1) for k, v in rows.items()}
    return {
        "connections": a.connections_capacity,
        "seconds": a.capacity_s,
        "rounds": rows,
        "mean_rps": means,
        "nproc": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }, None


def profile(a: argparse.Namespace) -> tuple[dict[str, Any], None]:
    """What one query costs here: encode and search in process (one thread) at batch 1 and 4, and the
    round trip of one keep-alive connection through `crops serve` (and nginx with ``--front nginx``):
    the numbers an SLO and nginx's max_conns are sized from."""
    from core.settings import limit_native_threads

    limit_native_threads(1)
    import faiss

    from service.engine import Retriever

    faiss.omp_set_num_threads(1)
    queries = [json.loads(b)["query"] for b in request_bodies(400, 7)]
    r = Retriever(a.bundle, intra_op_threads=1, precision=a.precision)
    for _ in range(20):
        r.encode(queries[:1])
    enc, srch, enc4, srch4 = [], [], [], []
    for q in queries[:300]:
        t0 = time.perf_counter()
        v = r.encode([q])
        t1 = time.perf_counter()
        r.search_vectors(v, 100)
        enc.append((t1 - t0) * 1e3)
        srch.append((time.perf_counter() - t1) * 1e3)
    for i in range(0, 300, 4):
        t0 = time.perf_counter()
        v = r.encode(queries[i : i + 4])
        t1 = time.perf_counter()
        r.search_vectors(v, 100)
        enc4.append((t1 - t0) * 1e3)
        srch4.append((time.perf_counter() - t1) * 1e3)
    res: dict[str, Any] = {
        "bundle": str(a.bundle),
        "precision": r.precision,
        "ntotal": int(r.index.ntotal),
        "in_process_ms": {
            "encode_b1": [round(pct(enc, 50), 2), round(pct(enc, 99), 2)],
            "search_b1": [round(pct(srch, 50), 2), round(pct(srch, 99), 2)],
            "encode_b4": [round(pct(enc4, 50), 2), round(pct(enc4, 99), 2)],
            "search_b4": [round(pct(srch4, 50), 2), round(pct(srch4, 99), 2)],
        },
    }
    del r
    env = {"CROPS_CACHE": "none", "CROPS_DEADLINE_MS": "10000", **process_env(a)}
    with Front(a, env) as srv:
        run(closed_loop(srv.url, 1, 2.0, seed=1))
        shots = run(closed_loop(srv.url, 1, a.capacity_s, seed=2))
    ok = [s.ms for s in shots if s.status == 200]
    res["round_trip_ms"] = [round(pct(ok, 50), 2), round(pct(ok, 99), 2)]
    res["round_trip_front"] = a.front
    res["nproc"] = os.cpu_count()
    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return res, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["overload", "process-models", "profile"])
    p.add_argument("--bundle", type=h.bundle_arg, required=True)
    p.add_argument("--out", type=Path, required=True, help="path without suffix: .json, .md (and .png) are written")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the one server (--front none)")
    p.add_argument("--front", choices=["none", "nginx"], default="none", help="nginx least_conn in front of replicas")
    p.add_argument("--replicas", type=int, default=1,
                   help="one-worker replicas behind nginx (--front nginx); the deployed unit is one per 2 cores")
    p.add_argument("--batch-slots", type=int, default=None,
                   help="CROPS_BATCH_SLOTS of every worker (default: the service's own); the reports made "
                   "before batch slots existed reproduce with --batch-slots 1 (and --replicas 2 behind nginx)")
    p.add_argument(
        "--max-conns",
        default=None,
        help="nginx max_conns per replica in the overload run (default: deploy/nginx/nginx.conf's; 0: none); "
        "a list (2,4,8) runs the overload once per value, a sizing sweep",
    )
    p.add_argument(
        "--server-nice",
        type=int,
        default=0,
        help="run every crops serve under nice -n N: the load generator (and nginx) get CPU first, as on "
        "machines of their own; 0: same priority",
    )
    p.add_argument(
        "--precision", choices=["fp32", "int8", "fp16", "auto"], default=None, help="CROPS_ENCODER_PRECISION"
    )
    p.add_argument("--slo-ms", type=float, default=10.0, help="the SLO; the server's deadline in the overload run")
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--ramp-s", type=float, default=5.0, help="seconds per rate of the capacity ramp")
    p.add_argument("--connections", type=int, default=64, help="open-loop keep-alive connections")
    p.add_argument("--connections-capacity", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--old-tree", type=Path, default=None, help="a checkout with service/dispatch.py (72aca5f)")
    a = p.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    mode: Any = {"overload": overload, "process-models": process_models, "profile": profile}[a.mode]
    res, fig = mode(a)
    res["command"] = "python -m benchmarks.overload " + " ".join(sys.argv[1:])
    res["out"] = str(a.out)
    md = render_md(a.mode, res)
    h.write_report(a.out.with_suffix(".md"), md, res, figure=fig)
    print(md)


if __name__ == "__main__":
    main()
