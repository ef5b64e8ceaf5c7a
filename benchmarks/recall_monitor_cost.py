"""What the online recall monitor costs the request path: the same service, the same fixed-rate load,
with ``CROPS_RECALL_SAMPLE`` at 0 (off) and at the shares given, in interleaved rounds.

Each point starts ``crops serve --workers 2`` (cache off, distinct queries, so every request is a
miss the monitor may sample), runs ``--seconds`` of open-loop load at ``--rate`` from 32 keep-alive
connections, and records p50/p99/p99.9, the CPU the server's process tree used per request
(user + system, from /proc), and the ``crops_online_recall_at_100`` gauge it exported. The exact
search runs in a thread off the event loop, so its cost shows as CPU per request and, on a busy
box, as latency through the cores it takes.

    python -m benchmarks.recall_monitor_cost --bundle runs/default/bundle --rate 100 --seconds 15 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import (
    ROOT,
    distinct_queries,
    fmt,
    free_port,
    log,
    machine_info,
    markdown_table,
    measure_open,
    server,
    server_env,
    tree_pids,
    write_report,
)

_GAUGE = re.compile(r'^crops_online_recall_at_100\{[^}]*\}\s+([0-9.eE+-]+)', re.M)


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (after pid and comm)
    return total / tick


def point(bundle: Path, share: float, bodies: list[bytes], rate: float, seconds: float, workers: int) -> dict[str, Any]:
    port = free_port()
    env = server_env(CROPS_RECALL_SAMPLE=str(share), CROPS_DEADLINE_MS="1000", CROPS_MAX_QUEUE="256")
    cmd = [sys.executable, "-m", "crops", "serve", "--bundle", str(bundle), "--port", str(port),
           "--workers", str(workers)]
    with server(cmd, port=port, name=f"recall-monitor-{share}", env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        measure_open(url, bodies[:200], rate=rate, seconds=3)  # warm-up: every worker loaded and warm
        cpu0 = tree_cpu_s(proc.pid)
        p = measure_open(url, bodies[200:], rate=rate, seconds=seconds)
        cpu = tree_cpu_s(proc.pid) - cpu0
        time.sleep(1.0)  # let the monitor's thread catch up before reading the gauge
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    gauges = [float(x) for x in _GAUGE.findall(metrics)]
    sent = max(1.0, p.get("rps", 0.0) * seconds)  # the CPU window covers the whole run, warm-up second included
    return {"share": share, **p, "server_cpu_ms_per_request": 1e3 * cpu / sent,
            "online_recall_at_100": min(gauges) if gauges else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--shares", default="0,0.05,0.25", help="comma-separated CROPS_RECALL_SAMPLE values")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "recall_monitor_cost")
    args = ap.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        print(f"error: {args.bundle} is not a bundle (no manifest.json)", file=sys.stderr)
        return 2
    try:
        shares = [float(x) for x in args.shares.split(",") if x.strip()]
    except ValueError:
        print(f"error: --shares takes numbers, got {args.shares!r}", file=sys.stderr)
        return 2
    per_point = int(args.rate * (args.seconds + 3)) + 200  # each point's queries are new (no cache, no merge)
    n = per_point * args.rounds * len(shares)
    queries, source = distinct_queries(n)
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for i, share in enumerate(shares):  # interleaved, and each round starts from another share
            share = shares[(i + r) % len(shares)]
            k = len(rows) * per_point
            bodies = [json.dumps({"query": q, "user_id": f"u{j}"}).encode()
                      for j, q in enumerate(queries[k:k + per_point])]
            p = point(args.bundle, share, bodies, args.rate, args.seconds, args.workers)
            p["round"] = r
            rows.append(p)
            log(f"round {r} share {share}: p50 {fmt(p.get('p50_ms'), 2)} p99 {fmt(p.get('p99_ms'), 2)} ms, "
                f"{fmt(p['server_cpu_ms_per_request'], 2)} CPU ms/request, recall {p['online_recall_at_100']}")
    summary = []
    for share in shares:
        ps = [p for p in rows if p["share"] == share]
        med = sorted(ps, key=lambda p: p.get("p99_ms") or 0)[len(ps) // 2]
        summary.append({
            "share": share,
            "p50_ms": sorted(p.get("p50_ms") or 0 for p in ps)[len(ps) // 2],
            "p99_ms_median": med.get("p99_ms"),
            "p99_ms_all": [p.get("p99_ms") for p in ps],
            "cpu_ms_per_request": sorted(p["server_cpu_ms_per_request"] for p in ps)[len(ps) // 2],
            "failures": sum(p.get("failures", 0) for p in ps),
            "online_recall_at_100": [p["online_recall_at_100"] for p in ps],
        })
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    result = {"bundle": str(args.bundle), "index": manifest.get("index", {}), "rate": args.rate,
              "seconds": args.seconds, "rounds": args.rounds, "workers": args.workers, "queries": source,
              "machine": machine_info(), "summary": summary, "points": rows}
    base = summary[0]
    table = markdown_table(
        ["CROPS_RECALL_SAMPLE", "p50 ms", "p99 ms (median of rounds)", "p99 ms per round",
         "server CPU ms / request", "Δ CPU vs off", "failures", "online recall@100"],
        [[s["share"], fmt(s["p50_ms"], 2), fmt(s["p99_ms_median"], 2), ", ".join(fmt(x, 1) for x in s["p99_ms_all"]),
          fmt(s["cpu_ms_per_request"], 2), fmt(s["cpu_ms_per_request"] - base["cpu_ms_per_request"], 2),
          s["failures"], ", ".join(fmt(x, 3) for x in s["online_recall_at_100"] if x is not None) or "–"]
         for s in summary],
    )
    md = "\n".join([
        "# Online recall monitor: its cost on the request path",
        "",
        f"`python -m benchmarks.recall_monitor_cost --bundle {args.bundle} --rate {args.rate:g} "
        f"--seconds {args.seconds:g} --rounds {args.rounds} --shares {args.shares}`",
        "",
        f"`crops serve --workers {args.workers}`, cache off, {args.rate:g} req/s open loop from 32 keep-alive "
        f"connections, {args.seconds:g} s a point after a 3 s warm-up, shares interleaved over {args.rounds} "
        f"rounds; {source}. Machine: {result['machine'].get('cores')} cores, {result['machine'].get('cpu')}.",
        "",
        *table,
        "",
    ])
    write_report(args.out.with_suffix(".md"), md, result)
    log(f"-> {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
