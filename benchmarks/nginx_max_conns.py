"""nginx's per-replica ``max_conns`` and replica count at the fleet's operating point: tail latency
against refusals.

    python -m benchmarks.nginx_max_conns [--max-conns 4,6,8] [--replicas 1] [--rate 400] [--rounds 4]
    # -> docs/results/nginx_max_conns.{md,json}

The deployed topology (deploy/nginx/nginx.conf: least_conn in front of one-worker replicas, each
worker running ``CROPS_BATCH_SLOTS`` batch slots on two cores) refuses
a request at once when every replica already has ``max_conns`` in flight. The shipped value was sized
for fast refusals at 3x overload (``benchmarks.overload``); this measures what each candidate costs at
the fleet bench's point instead: the fleet's nginx row (``benchmarks.fleet``: 1 replica on the bench
bundle, 400 req/s open loop from 32 keep-alive connections, the bisection for p99 <= 10 ms), once per
value and round, the values alternating their order over ``--rounds`` rounds so drift falls on all.
``--replicas 1,2`` compares replica counts too (every pair of a count and a ``max_conns`` value):
more one-worker replicas than cores hands the choice of which request runs next to the kernel's
scheduler, which never leaves a core idle while a replica has work, where with one replica per core
a request can wait behind another on one replica while the other one idles. The in-process limit
is measured before and after the rows, as the fleet does, so the report says what share of the box's
capacity ``--rate`` is (on a slower box, scale ``--rate`` and ``--slo-p99-ms`` to keep the fleet's share).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from benchmarks import fleet
from benchmarks import harness as h

WORK = h.ROOT / "runs" / "realq"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=WORK / "bundle_HNSW32_SQ8")
    ap.add_argument("--max-conns", default="4,6,8", help="values to compare, comma-separated (0: no limit)")
    ap.add_argument("--replicas", default="1", help="one-worker replica counts to compare, comma-separated")
    ap.add_argument("--rate", type=float, default=400.0, help="the fixed-rate point (req/s)")
    ap.add_argument("--slo-p99-ms", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="bisection points after --rate")
    ap.add_argument("--out", type=Path, default=h.ROOT / "docs" / "results" / "nginx_max_conns.md")
    a = ap.parse_args(argv)
    try:
        caps = [int(v) for v in a.max_conns.split(",") if v.strip()]
        counts = [int(v) for v in a.replicas.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: --max-conns and --replicas take integers, got {a.max_conns!r}, "
                         f"{a.replicas!r}") from None
    values = [(r, c) for r in counts for c in caps]
    if len(values) < 2 or not caps or not counts or min(caps) < 0 or min(counts) < 1 or a.rounds < 1 \
            or a.rate <= 0 or a.slo_p99_ms <= 0:
        raise SystemExit("error: compare two or more configurations (--max-conns values >= 0 times --replicas "
                         "counts >= 1); --rounds at least 1, --rate and --slo-p99-ms above 0")
    if not a.bundle.is_dir():
        raise SystemExit(f"error: {a.bundle} not found (python -m benchmarks.index_memory --n 1000000 builds it)")
    h.nginx_exe()
    fa = fleet.parse_args(["--bundle", str(a.bundle), "--steps", str(a.steps), "--rate", str(a.rate),
                           "--slo-p99-ms", str(a.slo_p99_ms)])
    queries, q_desc = h.search_queries()
    bodies = fleet.Bodies(queries)
    env = h.server_env(CROPS_ENCODER_PRECISION="int8")
    # the box's speed at the time, in the fleet's terms: the rate as a share of the in-process limit
    limit_rps = [fleet.limit_run(a.bundle, queries, "query_encoder.int8.onnx", fa.seconds)["rps"]]
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {v: [] for v in values}
    for r in range(a.rounds):
        for v in values if r % 2 == 0 else list(reversed(values)):
            with fleet.serving("nginx", a.bundle, None, env, h.RUNS / "logs", max_conns=v[1],
                               replicas=v[0]) as (url, pids, workers):
                row = fleet.http_row("nginx", url, bodies, fa, ceiling=2 * fa.rate, pids=pids, workers=workers)
            at = row["at_rate"]
            runs[v].append({"p50_ms": at["p50_ms"], "p99_ms": at["p99_ms"], "p999_ms": at["p999_ms"],
                            "failures": at["failures"], "requests": at["requests"],
                            "rps_within_slo": row["max_rps_within_slo"]})
            h.log(f"round {r + 1}: {v[0]} replicas, max_conns {v[1]}: p99 {at['p99_ms']} ms, {at['failures']} refused "
                  f"of {at['requests']}, SLO rate {row['max_rps_within_slo']}")
    limit_rps.append(fleet.limit_run(a.bundle, queries, "query_encoder.int8.onnx", fa.seconds)["rps"])
    m = h.machine_info()
    rows = []
    for (count, cap) in values:
        rs = runs[(count, cap)]
        rows.append({
            "replicas": count, "max_conns": cap, "runs": rs,
            "median_p50_ms": statistics.median(x["p50_ms"] for x in rs),
            "median_p99_ms": statistics.median(x["p99_ms"] for x in rs),
            "refused": sum(x["failures"] for x in rs), "requests": sum(x["requests"] for x in rs),
            "within_slo_at_rate": sum(x["p99_ms"] <= fa.slo_p99_ms and x["failures"] == 0 for x in rs),
        })
    rate = h.fmt(a.rate, 0)
    md = "\n".join([
        f"# nginx replicas and max_conns at {rate} req/s (the fleet's nginx row)",
        "",
        f"{h.describe_machine(m)} · git {m['git']} · bundle {a.bundle.name} (int8 tower) · "
        f"{q_desc} · {a.rounds} rounds, configurations alternating · {fa.seconds:g} s a point, "
        f"{fa.connections} connections. In-process limit (`benchmarks.limit`, 2 processes pinned one per core): "
        f"{h.fmt(float(limit_rps[0]))} req/s before the rows, {h.fmt(float(limit_rps[1]))} after; {rate} req/s "
        f"is {h.fmt(a.rate / statistics.mean(limit_rps), 2)} of their mean.",
        "",
        f"    python -m benchmarks.nginx_max_conns --max-conns {a.max_conns} --replicas {a.replicas} "
        f"--rate {rate} --slo-p99-ms {a.slo_p99_ms:g} --rounds {a.rounds}",
        "",
        *h.markdown_table(
            ["one-worker replicas", "max_conns per replica", f"p99 ms at {rate} req/s, per round",
             f"refused at {rate}, per round", f"max req/s with p99 ≤ {fa.slo_p99_ms:g} ms, per round",
             "median p50 ms", "median p99 ms", "refused in all", "rounds within the SLO"],
            [[row["replicas"], row["max_conns"] or "none",
              " / ".join(h.fmt(float(x["p99_ms"]), 2) for x in row["runs"]),
              " / ".join(str(x["failures"]) for x in row["runs"]),
              " / ".join(h.fmt(x["rps_within_slo"], 0) if x["rps_within_slo"] else "none" for x in row["runs"]),
              h.fmt(float(row["median_p50_ms"]), 2), h.fmt(float(row["median_p99_ms"]), 2),
              f"{row['refused']} of {row['requests']}", f"{row['within_slo_at_rate']} of {a.rounds}"]
             for row in rows],
        ),
        "",
    ])
    h.write_report(a.out, md, {"bundle": str(a.bundle), "rate": a.rate, "slo_p99_ms": a.slo_p99_ms,
                               "limit_rps": limit_rps, "machine": m, "rows": rows})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
