"""How much of a request's tail is the machine's: the same work, repeated, paced like light traffic.

    python -m benchmarks.latency_floor [--bundle B]   # -> docs/results/latency_floor.{md,json,png}

One process, one thread, the other core idle. Three kinds of work, each timed in wall-clock time
and in the thread's own CPU time (``time.thread_time``):

- ``fixed``: a fixed float32 matrix product, the same every time: no data-dependent cost at all;
- ``same query``: the service's ``Retriever`` (int8 query tower + the 1M HNSW bundle) answering one
  search query over and over: identical work, through the real encode and search;
- ``real queries``: the same ``Retriever`` over the fleet bench's search queries, one after another.

Each runs back to back (gap 0) and paced with a sleep of 10 and 40 ms between calls (40 ms is 25
req/s at one worker). Rounds alternate the order of the kinds, so drift falls on all alike.
Wall time above CPU time is time the thread was not running (preempted, descheduled by the
hypervisor); CPU time above its back-to-back value is the same work run slower (cold caches, a
core clocked down after idling). The p99 / p50 of identical work is the machine's floor under any
tail-latency goal: p99 <= 10 ms needs a p50 below 10 ms divided by it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as h

WORK = h.ROOT / "runs" / "realq"
GAPS_MS = (0.0, 10.0, 40.0)
KINDS = ("fixed", "same query", "real queries")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def _work(bundle: Path) -> dict[str, Callable[[int], object]]:
    """The three kinds of work, each a function of the call's number."""
    from service.engine import Retriever

    retriever = Retriever(bundle, precision="int8", use_gpu=False, verify=False)
    queries, _ = h.search_queries()
    a = np.random.default_rng(0).random((192, 384), dtype=np.float32)
    b = np.random.default_rng(1).random((384, 384), dtype=np.float32)
    same = queries[0]

    def fixed(_: int) -> None:
        for _ in range(9):  # about one request's encode + search
            a @ b

    return {
        "fixed": fixed,
        "same query": lambda _: retriever.retrieve([same], 100),
        "real queries": lambda i: retriever.retrieve([queries[i % len(queries)]], 100),
    }


def _run(fn: Callable[[int], object], start: int, n: int, gap_s: float) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for i in range(start, start + n):
        if gap_s:
            time.sleep(gap_s)
        w0, c0 = time.perf_counter(), time.thread_time()
        fn(i)
        cpu.append((time.thread_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=WORK / "bundle_HNSW32_SQ8")
    ap.add_argument("--calls", type=int, default=1200, help="timed calls per kind and gap, over all rounds")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=h.ROOT / "docs" / "results" / "latency_floor.md")
    a = ap.parse_args(argv)
    if not a.bundle.is_dir():
        raise SystemExit(f"error: {a.bundle} not found (python -m benchmarks.index_memory --n 1000000 builds it)")
    if a.calls < a.rounds * 100:
        raise SystemExit("error: --calls must give each round at least 100 calls (a p99 of fewer is one call)")
    faiss.omp_set_num_threads(1)
    work = _work(a.bundle)
    per_round = a.calls // a.rounds
    for fn in work.values():  # load pages and caches once before anything is timed
        _run(fn, 0, 50, 0.0)
    samples: dict[tuple[str, float], tuple[list[float], list[float]]] = {
        (k, g): ([], []) for k in KINDS for g in GAPS_MS
    }
    for r in range(a.rounds):
        order = KINDS if r % 2 == 0 else tuple(reversed(KINDS))
        for gap in GAPS_MS:
            for kind in order:
                wall, cpu = _run(work[kind], r * per_round, per_round, gap / 1e3)
                samples[(kind, gap)][0].extend(wall)
                samples[(kind, gap)][1].extend(cpu)
            h.log(f"round {r + 1}/{a.rounds}, gap {gap:g} ms done")
    rows: list[dict[str, Any]] = []
    for kind in KINDS:
        for gap in GAPS_MS:
            wall, cpu = samples[(kind, gap)]
            row: dict[str, Any] = {"work": kind, "gap_ms": gap, "calls": len(wall)}
            for name, xs in (("wall", wall), ("cpu", cpu)):
                row[f"{name}_p50_ms"] = round(statistics.median(xs), 3)
                row[f"{name}_p99_ms"] = round(_pct(xs, 99), 3)
                row[f"{name}_p999_ms"] = round(_pct(xs, 99.9), 3)
            row["wall_p99_over_p50"] = round(row["wall_p99_ms"] / row["wall_p50_ms"], 2)
            row["cpu_p99_over_p50"] = round(row["cpu_p99_ms"] / row["cpu_p50_ms"], 2)
            # How much of the wall tail the thread spent not running: at the wall p99 call and beyond.
            over = [w - c for w, c in zip(wall, cpu, strict=True) if w >= row["wall_p99_ms"]]
            row["not_running_ms_at_p99"] = round(statistics.median(over), 3) if over else 0.0
            rows.append(row)
            h.log(str(row))
    m = h.machine_info(tools=())
    md = "\n".join([
        "# The machine's latency floor: identical work, paced",
        "",
        f"{h.describe_machine(m)} · git {m['git']} · one process, one thread, the other core idle · "
        f"{a.calls} calls per row in {a.rounds} alternating rounds · `Retriever` on {a.bundle.name} (int8 tower).",
        "",
        f"    python -m benchmarks.latency_floor --bundle {a.bundle}",
        "",
        "Wall: the call's elapsed time. CPU: the thread's CPU time over the same call. "
        "Not running at p99: median wall - CPU over the calls at or above the wall p99.",
        "",
        *h.markdown_table(
            ["work", "gap ms", "wall p50 / p99 / p99.9 ms", "wall p99 / p50", "CPU p50 / p99 ms", "CPU p99 / p50",
             "not running at p99 ms"],
            [[r["work"], h.fmt(r["gap_ms"], 0),
              f"{h.fmt(r['wall_p50_ms'], 2)} / {h.fmt(r['wall_p99_ms'], 2)} / {h.fmt(r['wall_p999_ms'], 2)}",
              h.fmt(r["wall_p99_over_p50"], 2), f"{h.fmt(r['cpu_p50_ms'], 2)} / {h.fmt(r['cpu_p99_ms'], 2)}",
              h.fmt(r["cpu_p99_over_p50"], 2), h.fmt(r["not_running_ms_at_p99"], 2)] for r in rows],
        ),
        "",
    ])
    h.write_report(a.out, md, {"bundle": str(a.bundle), "machine": m, "rows": rows}, figure=_figure(rows))
    print(md)
    return 0


def _figure(rows: list[dict[str, Any]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(12, 3.6), sharey=False)
    for ax, kind in zip(axes, KINDS, strict=True):
        mine = [r for r in rows if r["work"] == kind]
        x = np.arange(len(mine))
        for off, (key, label) in enumerate((("wall", "wall"), ("cpu", "CPU"))):
            ax.bar(x + (off - 0.5) * 0.38, [r[f"{key}_p50_ms"] for r in mine], 0.38, label=f"{label} p50")
            ax.scatter(x + (off - 0.5) * 0.38, [r[f"{key}_p99_ms"] for r in mine], marker="_", s=300,
                       color="black" if key == "wall" else "grey", label=f"{label} p99", zorder=3)
        ax.set_xticks(x, [f"gap {r['gap_ms']:g} ms" for r in mine])
        ax.set_title(kind)
        ax.set_ylabel("ms")
    axes[0].legend(fontsize=7)
    fig.suptitle("Identical work, back to back and paced: p50 (bars) and p99 (marks)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
