"""Two rows of the fleet bench over repeated runs in alternating order, e.g. uvicorn against granian.

    python -m benchmarks.row_ab [--rows service,granian] [--runs 4]   # -> docs/results/row_ab_A_B.{md,json}

One fleet run (``benchmarks.fleet``) measures its rows one after the other, minutes apart, and this
VM's speed drifts by more than the difference between two servers over that time. So the two rows
run ``--runs`` times, the first of each pair alternating, on the fleet's bench bundle and load (400
req/s open loop from 32 connections, the bisection for p99 <= 10 ms). Reported per row: the p99 and
the failures at 400 req/s, the highest rate within the SLO, and the server's CPU per answered
request at 400 req/s (its processes' CPU time over the answers; the same rate on both, so the same
batching). ``service,granian``: the same app under uvicorn (``crops serve``) and granian;
``service,nginx``: ``crops serve`` against the deployed topology, nginx least_conn in front of
the replica; ``service,stock``: against the stock peer (``benchmarks.stock_index``), which
may meet the SLO at no rate (its SLO rate is then n/a): its most answers a second at any latency, the
closed loop or the busiest fixed rate (``fleet.most_answered``), compare capacity.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks import fleet
from benchmarks import harness as h

WORK = h.ROOT / "runs" / "realq"


def median(values: list[Any]) -> float | None:
    """The median of the values that were measured (None: the row never had one, e.g. no rate met the SLO)."""
    got = [float(v) for v in values if v is not None]
    return statistics.median(got) if got else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=WORK / "bundle_HNSW32_SQ8")
    ap.add_argument("--vectors", type=Path, default=WORK / "vectors_1000000.npy")
    ap.add_argument("--rows", default="service,granian", help=f"two of {','.join(fleet.ROWS[:-1])}")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--work", type=Path, default=None, help="fleet reports (default runs/perf/row_ab_A_B)")
    ap.add_argument("--out", type=Path, default=None, help="default docs/results/row_ab_A_B.md")
    a = ap.parse_args(argv)
    rows = tuple(r.strip() for r in a.rows.split(",") if r.strip())
    if len(rows) != 2 or len(set(rows)) != 2 or not set(rows) <= set(fleet.ROWS) - {"naive"}:
        raise SystemExit(f"error: --rows takes two different rows of {', '.join(fleet.ROWS[:-1])}")
    tag = "row_ab_" + "_".join(rows)
    work = a.work or h.RUNS / tag
    out_md = a.out or h.ROOT / "docs" / "results" / f"{tag}.md"
    if not a.bundle.is_dir():
        raise SystemExit(f"error: {a.bundle} not found (python -m benchmarks.index_memory --n 1000000 builds it)")
    if a.runs < 2:
        raise SystemExit("error: --runs must be at least 2 (each row first once)")
    per_run: list[dict[str, Any]] = []
    for i in range(a.runs):
        order = rows if i % 2 == 0 else tuple(reversed(rows))
        out = work / f"run{i + 1}" / "bench.md"
        h.log(f"run {i + 1}/{a.runs}: {', '.join(order)}")
        code = fleet.main(["--bundle", str(a.bundle), "--vectors", str(a.vectors), "--rows", ",".join(order),
                           "--out", str(out)])
        if code:
            raise SystemExit(f"error: fleet run {i + 1} failed ({code})")
        res = json.loads(out.with_suffix(".json").read_text())
        run: dict[str, Any] = {"order": list(order), "limit_rps": res["limit_rps"]}
        for name in rows:
            row = res["rows"][name]
            at = row["at_rate"]
            run[name] = {
                "p99_ms_at_400": at["p99_ms"], "p50_ms_at_400": at["p50_ms"], "failures_at_400": at["failures"],
                "rps_within_slo": row["max_rps_within_slo"],
                "most_answered_rps": fleet.most_answered(row),
                "cpu_ms_per_answer_at_400": round(at["server_cores"] * 1e3 / at["ok_rps"], 3) if at["ok_rps"] else None,
            }
        per_run.append(run)
    summary: dict[str, dict[str, Any]] = {}
    for name in rows:
        runs = [r[name] for r in per_run]
        keys = ("p99_ms_at_400", "rps_within_slo", "cpu_ms_per_answer_at_400", "most_answered_rps")
        summary[name] = {key: median([r.get(key) for r in runs]) for key in keys}
        summary[name]["within_slo_at_400"] = sum(r["p99_ms_at_400"] <= 10.0 and r["failures_at_400"] == 0 for r in runs)
    m = h.machine_info(tools=())

    def cells(name: str, key: str, nd: int) -> str:
        return " / ".join(h.fmt(None if (v := r[name].get(key)) is None else float(v), nd) for r in per_run)

    def med(name: str, key: str, nd: int) -> str:
        v = summary[name][key]
        return h.fmt(None if v is None else float(v), nd)

    md = "\n".join([
        f"# {rows[0]} vs {rows[1]}, repeated fleet runs",
        "",
        f"{m['cpu']} · {m['cores']} cores · git {m['git']} · {a.runs} fleet runs, rows in alternating order · "
        f"bundle {a.bundle.name}.",
        "",
        f"    python -m benchmarks.row_ab --rows {','.join(rows)} --runs {a.runs}",
        "",
        "Per run (in run order; the first row of run 1 is " + per_run[0]["order"][0] + "):",
        "",
        *h.markdown_table(
            ["row", "p99 ms at 400 req/s", "failures at 400", "max req/s, p99 ≤ 10 ms",
             "CPU ms per answer at 400 req/s", "most answered req/s, any latency",
             "median p99 / SLO rate / CPU ms / most answered", "runs within the SLO at 400"],
            [[name, cells(name, "p99_ms_at_400", 2), " / ".join(str(r[name]["failures_at_400"]) for r in per_run),
              cells(name, "rps_within_slo", 0), cells(name, "cpu_ms_per_answer_at_400", 2),
              cells(name, "most_answered_rps", 0),
              f"{med(name, 'p99_ms_at_400', 2)} / {med(name, 'rps_within_slo', 0)} / "
              f"{med(name, 'cpu_ms_per_answer_at_400', 2)} / {med(name, 'most_answered_rps', 0)}",
              f"{summary[name]['within_slo_at_400']} of {a.runs}"] for name in rows],
        ),
        "",
        "The in-process limit of each run (req/s, mean of before and after its rows): "
        + ", ".join(h.fmt(float(r["limit_rps"]), 0) for r in per_run) + ".",
        "",
    ])
    h.write_report(out_md, md, {"machine": m, "runs": per_run, "summary": summary})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
