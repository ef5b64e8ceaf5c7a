"""Transparent huge pages for the serving heap: glibc's ``malloc`` hugetlb tunable, side by side.

    python -m benchmarks.hugepages [--bundle runs/realq/bundle_HNSW32_SQ8]   # -> docs/results/hugepages.{md,json}

A graph search reads a few thousand nodes scattered over a 626 MiB index; with 4 KiB pages nearly
every one is a TLB miss, with 2 MiB pages the index spans ~310 pages. The kernel here gives huge
pages only to memory that asks for them (``transparent_hugepage=madvise``), and glibc asks for its
large allocations when started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``. Each arm is a fresh
process that loads the service's ``Retriever`` (int8 tower + the bundle) with or without the tunable,
then answers the fleet bench's search queries one at a time: back to back and with 10 ms between
calls. Arms alternate over ``--rounds`` rounds, each round a new pair of processes, so drift falls on
both alike. Reports the encode + search time, each arm's huge-page memory (``AnonHugePages`` in
``/proc/PID/smaps_rollup``) and RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness as h
from service.heap import HUGE_PAGES_TUNABLE

WORK = h.ROOT / "runs" / "realq"
TUNABLE = HUGE_PAGES_TUNABLE
ARMS = {"4 KiB pages (default)": "", "huge pages (malloc hugetlb=1)": TUNABLE}


def _child(bundle: Path, calls: int, gap_ms: float, offset: int) -> dict[str, Any]:
    """One arm in this process: load, warm up, time ``calls`` queries at ``gap_ms`` apart."""
    import faiss

    from service.engine import Retriever

    faiss.omp_set_num_threads(1)
    retriever = Retriever(bundle, precision="int8", use_gpu=False, verify=False)
    queries, _ = h.search_queries()
    for q in queries[:50]:
        retriever.retrieve([q], 100)
    ms = []
    for i in range(offset, offset + calls):
        if gap_ms:
            time.sleep(gap_ms / 1e3)
        t0 = time.perf_counter()
        retriever.retrieve([queries[i % len(queries)]], 100)
        ms.append((time.perf_counter() - t0) * 1e3)
    mem: dict[str, int] = {}
    for line in Path(f"/proc/{os.getpid()}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "AnonHugePages"):
            mem[key] = int(rest.split()[0]) // 1024
    return {"ms": ms, "rss_mib": mem.get("Rss", 0), "huge_mib": mem.get("AnonHugePages", 0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=WORK / "bundle_HNSW32_SQ8")
    ap.add_argument("--calls", type=int, default=600, help="timed queries per arm, gap and round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=h.ROOT / "docs" / "results" / "hugepages.md")
    ap.add_argument("--child", nargs=3, metavar=("CALLS", "GAP_MS", "OFFSET"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.bundle, int(a.child[0]), float(a.child[1]), int(a.child[2]))))
        return 0
    if not a.bundle.is_dir():
        raise SystemExit(f"error: {a.bundle} not found (python -m benchmarks.index_memory --n 1000000 builds it)")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {(arm, g): [] for arm in ARMS for g in (0.0, 10.0)}
    for rnd in range(a.rounds):
        names = list(ARMS) if rnd % 2 == 0 else list(reversed(ARMS))
        for gap in (0.0, 10.0):
            for arm in names:
                env = h.server_env()
                env.pop("GLIBC_TUNABLES", None)
                if ARMS[arm]:
                    env["GLIBC_TUNABLES"] = ARMS[arm]
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.hugepages", "--bundle", str(a.bundle),
                     "--child", str(a.calls), str(gap), str(rnd * a.calls)],
                    cwd=h.ROOT, env=env, capture_output=True, text=True, check=True,
                )
                res = json.loads(out.stdout.strip().splitlines()[-1])
                runs[(arm, gap)].append(res)
                h.log(f"round {rnd + 1}: {arm}, gap {gap:g} ms: p50 {statistics.median(res['ms']):.3f} ms, "
                      f"huge pages {res['huge_mib']} MiB of {res['rss_mib']} MiB RSS")
    rows: list[dict[str, Any]] = []
    for (arm, gap), rs in runs.items():
        ms = [x for res in rs for x in res["ms"]]
        ms.sort()
        rows.append({
            "arm": arm, "gap_ms": gap, "calls": len(ms),
            "p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3),
            "round_p50s_ms": [round(statistics.median(res["ms"]), 3) for res in rs],
            "round_p99s_ms": [round(sorted(res["ms"])[int(0.99 * (len(res["ms"]) - 1))], 3) for res in rs],
            "huge_mib": max(res["huge_mib"] for res in rs), "rss_mib": max(res["rss_mib"] for res in rs),
        })
    base = {row["gap_ms"]: row["p50_ms"] for row in rows if not ARMS[row["arm"]]}
    for row in rows:
        row["p50_ratio"] = round(row["p50_ms"] / base[row["gap_ms"]], 3)
    m = h.machine_info(tools=())
    md = "\n".join([
        "# Huge pages for the serving heap (glibc malloc hugetlb tunable)",
        "",
        f"{h.describe_machine(m)} · git {m['git']} · transparent_hugepage: `{thp}` · "
        f"`Retriever` on {a.bundle.name} (int8 tower), one query at a time, one thread · "
        f"{a.calls} queries per arm, gap and round, {a.rounds} rounds alternating the arms, a fresh process each.",
        "",
        f"    python -m benchmarks.hugepages --bundle {a.bundle}",
        "",
        *h.markdown_table(
            ["arm", "gap ms", "p50 / p99 ms (encode + search)", "p50 vs 4 KiB pages", "p50 per round ms",
             "p99 per round ms",
             "huge-page MiB", "RSS MiB"],
            [[r["arm"], h.fmt(r["gap_ms"], 0), f"{h.fmt(r['p50_ms'], 3)} / {h.fmt(r['p99_ms'], 3)}",
              h.fmt(r["p50_ratio"], 3), ", ".join(f"{x:.3f}" for x in r["round_p50s_ms"]),
              ", ".join(f"{x:.2f}" for x in r["round_p99s_ms"]), r["huge_mib"],
              r["rss_mib"]] for r in rows],
        ),
        "",
    ])
    h.write_report(a.out, md, {"bundle": str(a.bundle), "machine": m, "thp": thp, "rows": rows})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
