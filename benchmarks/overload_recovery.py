"""Does `crops serve` recover after an overload? The same fixed rate on a fresh server and after one.

Two servers, one after the other (`crops serve --workers N`, default 2, cache off, the bundle given):
the first gets ``--rate`` (≈ its capacity) fresh; the second gets ``--factor`` (default 2) × ``--rate``
first, then ``--rate`` twice and ``--rate`` / 2 (``--factor 1`` is the control: a second server
without the overload). Each point is ``loadtest.openloop``'s open loop from ``--connections``
keep-alive connections, distinct queries. Reported per point: answered req/s (goodput), share
refused, p99; how the connections were spread over the workers (established sockets per worker pid,
read mid-point), to tell a worker imbalance from a server-wide state; and, from the server's
``/metrics``, where an answered miss spent its time (queued, encoding, searching), how many queries
were computed and why requests were refused.

    python -m benchmarks.overload_recovery --bundle runs/realq/bundle_IVF1024_PQ48_Refine_SQ8__np32_k8 \\
        --rate 200 --out docs/results/overload_recovery.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import harness as h

ROOT = h.ROOT


def connections_per_worker(server_pid: int, port: int) -> list[int]:
    """Established connections on ``port`` held by each process of the server's tree, largest first."""
    import psutil

    counts: Counter[int] = Counter()
    for pid in h.tree_pids(server_pid):
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        counts[pid] = sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)
    return sorted((n for n in counts.values() if n), reverse=True)


_SERIES = re.compile(r'^(crops_shed_total|crops_request_latency_seconds_sum|crops_request_latency_seconds_count|'
                     r'crops_encoder_batch_size_sum|crops_encoder_batch_size_count)(\{[^}]*\})? ([0-9.e+-]+)$')


def server_counters(url: str) -> dict[str, float]:
    """The shed counters, stage latency sums/counts and batch sizes of ``/metrics`` (all workers)."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = _SERIES.match(line)
        if m:
            key = m.group(1) + (m.group(2) or "")
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def stage_split(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Per point: mean ms per answered miss in queue / encode / search, mean batch, refusals by reason."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    out: dict[str, Any] = {}
    for stage in ("queue", "encode", "search"):
        total = sum(v for k, v in d.items() if k.startswith("crops_request_latency_seconds_sum")
                    and f'stage="{stage}"' in k)
        count = sum(v for k, v in d.items() if k.startswith("crops_request_latency_seconds_count")
                    and f'stage="{stage}"' in k)
        out[f"{stage}_ms"] = round(1e3 * total / count, 2) if count else None
    batches = d.get("crops_encoder_batch_size_count", 0.0)
    out["computed"] = int(d.get("crops_encoder_batch_size_sum", 0.0))
    out["mean_batch"] = round(out["computed"] / batches, 2) if batches else None
    out["shed"] = {k.split('"')[1]: int(v) for k, v in d.items() if k.startswith("crops_shed_total") and v}
    return out


def run_server(bundle: Path, rates: list[float], bodies: list[bytes], a: argparse.Namespace, name: str
               ) -> list[dict[str, Any]]:
    """Start one server, run ``rates`` in order, return one point each."""
    from loadtest.ready import wait_workers

    port = h.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "crops", "serve", "--bundle", str(bundle), "--port", str(port),
           "--workers", str(a.workers)]
    points = []
    with h.server(cmd, port=port, name=name, env=h.server_env(), log_dir=h.RUNS / "logs") as proc:
        wait_workers(url, a.workers, timeout=900.0)

        def probe_into(out: list[int]) -> None:
            out.extend(connections_per_worker(proc.pid, port))

        for rate in rates:
            need = int(rate * a.seconds) + 10
            part, bodies = bodies[:need], bodies[need:]
            spread: list[int] = []
            probe = threading.Timer(a.seconds / 2, probe_into, args=(spread,))
            before = server_counters(url)
            probe.start()
            p = h.measure_open(url, part, rate=rate, seconds=a.seconds, connections=a.connections)
            probe.join()
            split = stage_split(before, server_counters(url))
            refused = p["failures"] / p["requests"] if p["requests"] else 0.0
            points.append({"server": name, "rate": rate, "ok_rps": p["ok_rps"], "refused": round(refused, 3),
                           "p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"], "connections_per_worker": spread,
                           **split})
            h.log(f"{name}: {rate:g} req/s → answered {p['ok_rps']} req/s, refused {refused:.0%}, "
                  f"p99 {p['p99_ms']} ms, connections per worker {spread}, {split}")
    return points


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--rate", type=float, default=200.0, help="about the server's capacity (req/s)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="crops serve --workers")
    ap.add_argument("--factor", type=float, default=2.0,
                    help="the second server's first point, x --rate (1: a control without the overload)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "overload_recovery.md")
    a = ap.parse_args(argv)
    if not (a.bundle / "manifest.json").is_file():
        print(f"error: {a.bundle} is not a bundle (no manifest.json)", file=sys.stderr)
        return 2
    r = a.rate
    plan = [("fresh", [r]), ("after-overload" if a.factor > 1 else "second server", [a.factor * r, r, r, r / 2])]
    total = sum(int(x * a.seconds) + 10 for _, rates in plan for x in rates)
    queries, q_desc = h.distinct_queries(total)
    bodies = [json.dumps({"query": q}).encode() for q in queries]
    points: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for name, rates in plan:
        points += run_server(a.bundle, rates, bodies, a, name)
        bodies = bodies[sum(int(x * a.seconds) + 10 for x in rates):]
    command = "python -m benchmarks.overload_recovery " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# Goodput at capacity, fresh and after an overload", "",
             f"`crops serve --workers {a.workers}`, cache off, bundle `{a.bundle}`; open loop from {a.connections} "
             f"connections, {a.seconds:g} s a point, the first second left out; {q_desc}. Each server's points "
             "run in the order listed.", "", f"    {command}", "",
             "Server side, from `/metrics` over the point (all workers): mean ms per answered miss queued, "
             "encoding and searching (a batch's encode and search count for each of its queries); queries "
             "computed and their mean batch; refusals by reason (predicted: refused on arrival; deadline: "
             "waited past it; queue_full).", "",
             "| server | offered req/s | answered req/s | refused | p50 / p99 ms | connections per worker | "
             "queue / encode / search ms | computed (mean batch) | refusals by reason |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        shed = ", ".join(f"{k} {v}" for k, v in sorted(p["shed"].items())) or "–"
        lines.append(f"| {p['server']} | {p['rate']:g} | {p['ok_rps']} | {p['refused']:.0%} | "
                     f"{p['p50_ms']} / {p['p99_ms']} | {' / '.join(map(str, p['connections_per_worker'])) or '–'} | "
                     f"{p['queue_ms']} / {p['encode_ms']} / {p['search_ms']} | {p['computed']} ({p['mean_batch']}) | "
                     f"{shed} |")
    result = {"command": command, "bundle": str(a.bundle), "seconds": a.seconds, "connections": a.connections,
              "machine": h.machine_info(), "points": points, "wall_s": round(time.monotonic() - t0, 1)}
    for path in h.write_report(a.out, "\n".join(lines), result):
        h.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
