"""Process models side by side on the 1M bench bundle, alternating: p50/p99, failures, CPU per answer, PSS.

Arms: ``1x2`` one `crops serve` worker running two batch slots (``1x3``: three), ``2x1`` two workers
with one slot each, ``2x2`` two workers with two slots each (four compute threads on two cores), ``peer`` the strong
peer (plain FastAPI, 2 workers). ``ARM@LABEL`` runs a service arm on the code of another checkout
(``--tree LABEL=PATH``): a change measured against the commit before it, in the same rounds.
Each round starts every arm afresh in a rotated order and measures it at each fixed rate (open loop,
32 connections, the bench's shuffled real search queries; the cache is off).

    python -m benchmarks.batch_slots --rounds 4      # needs make bench's bundle (runs/realq/bundle_HNSW32_SQ8)
    git worktree add ../before HEAD~1 && python -m benchmarks.batch_slots --tree before=../before --arms 1x2@before,1x2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness as h
from benchmarks.fleet import Bodies, serving

BUNDLE = h.ROOT / "runs" / "realq" / "bundle_HNSW32_SQ8"  # make bench's bundle
ARMS = {"1x2": ("service", 1, 2), "1x3": ("service", 1, 3), "2x1": ("service", 2, 1),  # row, workers, slots
        "2x2": ("service", 2, 2), "peer": ("peer", 2, 1)}


def tree_commit(tree: Path) -> str:
    """The commit a checkout is at (with -dirty when it has changes), for the report."""
    out = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty", "--abbrev=7"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def run_arm(arm: str, bundle: Path, bodies: Bodies, rates: list[int], seconds: float, rnd: int,
            trees: dict[str, Path]) -> list[dict[str, Any]]:
    name, _, tree = arm.partition("@")
    row, workers, slots = ARMS[name]
    env = h.server_env(CROPS_ENCODER_PRECISION="int8", CROPS_BATCH_SLOTS=str(slots))
    out = []
    with serving(row, bundle, None, env, h.RUNS / "scratch" / "slots_logs", workers=workers,
                 tree=trees[tree] if tree else h.ROOT) as (url, pids, n):
        h.measure_closed(url + "/retrieve", bodies.take(1000), connections=2, seconds=3)  # warm-up
        for rate in rates:
            pt = h.measure_open(url + "/retrieve", bodies.take(int(rate * seconds)), rate=rate, seconds=seconds,
                                server_pids=pids)
            rec = {"round": rnd, "arm": arm, "rate": rate, "p50_ms": pt["p50_ms"], "p99_ms": pt["p99_ms"],
                   "p999_ms": pt["p999_ms"], "failures": pt["failures"], "within_slo": h.meets_slo(pt, 10.0),
                   "cpu_ms_per_answer": round(pt["server_cores"] * 1e3 / max(pt["ok_rps"], 1e-9), 2),
                   "generator_cores": pt["generator_cores"]}
            h.log(str(rec))
            out.append(rec)
        pss = round(sum(h.tree_pss_mib(p) for p in pids) / n, 1)
        for rec in out:
            rec["pss_mib_per_worker"] = pss
            rec["pss_mib_per_two_cores"] = round(pss * n, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=h.bundle_arg, default=BUNDLE)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rates", default="400,500")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--arms", default="1x2,2x1,peer",
                    help="comma-separated; ARM@LABEL runs the service arm on the code of --tree LABEL=PATH")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                    help="another checkout (e.g. `git worktree add ../before HEAD`) for ARM@LABEL arms")
    ap.add_argument("--out", type=Path, default=h.ROOT / "docs" / "results" / "batch_slots.md")
    a = ap.parse_args(argv)
    arms = a.arms.split(",")
    trees: dict[str, Path] = {}
    for spec in a.tree:
        label, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "service").is_dir():
            print(f"error: --tree {spec}: expected LABEL=PATH of a checkout (e.g. a git worktree)", file=sys.stderr)
            return 2
        trees[label] = Path(path).resolve()
    if unknown := [x for x in arms if x.partition("@")[0] not in ARMS or x.partition("@")[2] not in {"", *trees}]:
        print(f"error: unknown arm(s) {', '.join(unknown)} (arms: {', '.join(ARMS)}, each optionally "
              f"@LABEL of a --tree)", file=sys.stderr)
        return 2
    rates = [int(r) for r in a.rates.split(",")]
    qs, qhow = h.search_queries()
    bodies = Bodies(qs)
    started = h.machine_info()
    points: list[dict[str, Any]] = []
    for rnd in range(a.rounds):
        for arm in arms[rnd % len(arms):] + arms[:rnd % len(arms)]:  # rotate who goes first
            points += run_arm(arm, a.bundle, bodies, rates, a.seconds, rnd, trees)

    def med(arm: str, rate: int, key: str) -> float:
        return round(float(statistics.median(p[key] for p in points if p["arm"] == arm and p["rate"] == rate)), 2)

    def each(arm: str, rate: int, key: str) -> str:
        return " / ".join(h.fmt(p[key], 1) for p in points if p["arm"] == arm and p["rate"] == rate)

    rows = []
    for rate in rates:
        for arm in arms:
            met = sum(p["within_slo"] for p in points if p["arm"] == arm and p["rate"] == rate)
            rows.append([rate, arm, each(arm, rate, "p99_ms"), med(arm, rate, "p50_ms"), med(arm, rate, "p99_ms"),
                         each(arm, rate, "failures"), f"{met} of {a.rounds}", med(arm, rate, "cpu_ms_per_answer"),
                         med(arm, rate, "pss_mib_per_two_cores")])
    cmd = "python -m benchmarks.batch_slots " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ["# Process models on two cores: batch slots per worker against workers per core", "",
          f"{h.describe_machine(started)} · git {started['git']} · bundle {a.bundle.name} · "
          f"{a.rounds} rounds, arms started afresh each round in rotated order · {a.seconds:.0f} s per point, "
          f"32 connections, open loop · queries: {qhow} · cache off", "", f"    {cmd.strip()}", "",
          "Arms: `1x2` one `crops serve` worker with 2 batch slots (`1x3`: 3); `2x1` two workers with 1 slot each; "
          "`2x2` two workers with 2 slots each; `ARM@LABEL` the arm on the code of the `--tree` LABEL "
          f"({', '.join(f'{k}: commit {tree_commit(v)}' for k, v in trees.items()) or 'none given'}); "
          "`peer` the strong peer (plain FastAPI + the same int8 tower and index, 2 uvicorn workers). "
          "CPU per answer: the server processes' CPU over the point divided by its answers. PSS: the "
          "server's process trees at the end of its points (all of them: the memory two cores cost).", "",
          *h.markdown_table(["req/s", "arm", "p99 ms each round", "p50 ms (median)", "p99 ms (median)",
                             "failures each round", "p99 ≤ 10 ms, no failure", "CPU ms / answer (median)",
                             "PSS MiB for the 2 cores"], rows)]
    result = {"command": cmd.strip(), "machine": started, "rounds": a.rounds, "rates": rates, "points": points,
              "median": {f"{arm}@{rate}": {k: med(arm, rate, k) for k in ("p50_ms", "p99_ms", "cpu_ms_per_answer")}
                         for arm in arms for rate in rates}}
    for path in h.write_report(a.out, "\n".join(md), result):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
