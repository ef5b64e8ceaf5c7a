"""Load-test samples → summary numbers, SLO verdict, markdown report and PNG (latency over time per arm)."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.atomic import atomic_path, atomic_write_json, atomic_write_text


@dataclass
class Sample:
    """One request: when it started (s since the test began), where it went and how it ended."""

    t: float
    endpoint: str
    arm: str
    latency_ms: float
    ok: bool
    status: int = 200
    error: str = ""
    bucket: str = ""


@dataclass
class Slo:
    """Pass criteria over the hold window (ramp excluded)."""

    p99_ms: float = 10.0
    min_rate_share: float = 0.95  # achieved rate ≥ this share of the target
    max_fail_ratio: float = 0.001


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; nan for none."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return float(s[k])


def latency_stats(samples: Iterable[Sample]) -> dict[str, float]:
    """count, failures, p50/p90/p99/max of successful requests' latency (ms)."""
    samples = list(samples)
    ok = [s.latency_ms for s in samples if s.ok]
    return {
        "count": len(samples),
        "failures": sum(1 for s in samples if not s.ok),
        "p50_ms": round(percentile(ok, 50), 3),
        "p90_ms": round(percentile(ok, 90), 3),
        "p99_ms": round(percentile(ok, 99), 3),
        "max_ms": round(max(ok), 3) if ok else math.nan,
    }


def run_stats(samples: Iterable[Sample], seconds: float, *, warmup_s: float = 0.0) -> dict[str, float]:
    """One fixed-length load run (``loadtest.openloop``): the requests sent in ``[warmup_s, seconds)``,
    their rate, failures, and p50/p90/p99/p99.9/max/mean latency (ms) of the successful ones; ``ok_rps``
    is goodput: successful answers that *arrived* in the window, whenever sent (a shed 503 is fast and is
    not throughput; a queueing server's late answers are not throughput of the window either)."""
    span = seconds - warmup_s
    if span <= 0:
        raise ValueError(f"warm-up {warmup_s} s leaves nothing of a {seconds} s run")
    samples = list(samples)  # read twice: by send time (requests) and by arrival time (goodput)
    held = [s for s in samples if warmup_s <= s.t < seconds]
    ok = [s.latency_ms for s in held if s.ok]
    return {
        "requests": len(held),
        "rps": round(len(held) / span, 1),
        "ok_rps": round(sum(1 for s in samples if s.ok and warmup_s <= s.t + s.latency_ms / 1e3 < seconds) / span, 1),
        "failures": sum(1 for s in held if not s.ok),
        "p50_ms": round(percentile(ok, 50), 3),
        "p90_ms": round(percentile(ok, 90), 3),
        "p99_ms": round(percentile(ok, 99), 3),
        "p999_ms": round(percentile(ok, 99.9), 3),
        "max_ms": round(max(ok), 3) if ok else math.nan,
        "mean_ms": round(sum(ok) / len(ok), 3) if ok else math.nan,
    }


def summarize(
    samples: Sequence[Sample],
    *,
    target_rate: float,
    hold_start: float,
    hold_end: float,
    slo: Slo,
    slo_endpoint: str = "/retrieve",
) -> dict[str, Any]:
    """Numbers over the hold window, per endpoint/arm/bucket, and whether the SLO was met (with reasons)."""
    hold = [s for s in samples if hold_start <= s.t < hold_end]
    span = max(1e-9, hold_end - hold_start)
    overall = latency_stats(hold)
    by_endpoint = {
        e: latency_stats(s for s in hold if s.endpoint == e) for e in sorted({s.endpoint for s in hold})
    }
    by_arm = {
        a: latency_stats(s for s in hold if s.arm == a and s.endpoint == slo_endpoint)
        for a in sorted({s.arm for s in hold if s.endpoint == slo_endpoint})
    }
    by_bucket = {
        b: latency_stats(s for s in hold if s.bucket == b and s.endpoint == slo_endpoint)
        for b in sorted({s.bucket for s in hold if s.bucket and s.endpoint == slo_endpoint})
    }
    failures = Counter(f"{s.endpoint} {s.error or 'HTTP ' + str(s.status)}" for s in hold if not s.ok)
    achieved = len(hold) / span
    slo_stats = by_endpoint.get(slo_endpoint, latency_stats([]))
    reasons = []
    if not slo_stats["count"]:
        reasons.append(f"no {slo_endpoint} requests in the hold window")
    elif not slo_stats["p99_ms"] <= slo.p99_ms:  # nan (no successes) fails too
        reasons.append(f"{slo_endpoint} p99 {slo_stats['p99_ms']:.2f} ms > {slo.p99_ms:g} ms")
    if achieved < slo.min_rate_share * target_rate:
        reasons.append(f"achieved {achieved:.0f} req/s < {slo.min_rate_share:.0%} of target {target_rate:g}")
    fail_ratio = overall["failures"] / max(1, overall["count"])
    if fail_ratio > slo.max_fail_ratio:
        reasons.append(f"failure ratio {fail_ratio:.2%} > {slo.max_fail_ratio:.2%}")
    return {
        "target_rate": target_rate,
        "achieved_rate": round(achieved, 1),
        "hold_seconds": round(span, 1),
        "slo": asdict(slo),
        "slo_met": not reasons,
        "slo_violations": reasons,
        "overall": overall,
        "by_endpoint": by_endpoint,
        "by_arm": by_arm,
        "by_bucket": by_bucket,
        "failures": dict(failures.most_common()),
    }


def windows(
    samples: Sequence[Sample], width: float = 1.0, endpoint: str | None = "/retrieve"
) -> dict[str, list[tuple[float, float, float, float, int]]]:
    """Per arm: (window start, p50, p90, p99, requests) over time windows of ``width`` seconds."""
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    counts: Counter[tuple[str, int]] = Counter()
    for s in samples:
        if endpoint is not None and s.endpoint != endpoint:
            continue
        key = (s.arm, int(s.t // width))
        counts[key] += 1
        if s.ok:
            cells[key].append(s.latency_ms)
    out: dict[str, list[tuple[float, float, float, float, int]]] = defaultdict(list)
    for arm, w in sorted(counts, key=lambda k: (k[0], k[1])):
        vals = cells.get((arm, w), [])
        out[arm].append(
            (w * width, percentile(vals, 50), percentile(vals, 90), percentile(vals, 99), counts[(arm, w)])
        )
    return dict(out)


def plot(
    samples: Sequence[Sample],
    path: Path,
    *,
    title: str,
    slo_ms: float | None = None,
    hold: tuple[float, float] | None = None,
) -> None:
    """PNG: latency percentiles over time per arm (top), requests/s and failures over time (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, rows) in enumerate(sorted(windows(samples).items())):
        c = colors[i % len(colors)]
        ts = [r[0] for r in rows]
        ax1.plot(ts, [r[1] for r in rows], color=c, ls=":", label=f"{arm} p50")
        ax1.plot(ts, [r[2] for r in rows], color=c, ls="--", label=f"{arm} p90")
        ax1.plot(ts, [r[3] for r in rows], color=c, ls="-", label=f"{arm} p99")
    if slo_ms is not None:
        ax1.axhline(slo_ms, color="red", lw=0.8, label=f"SLO p99 {slo_ms:g} ms")
    ax1.set_ylabel("latency (ms), 1 s windows")
    ax1.set_yscale("log")
    ax1.legend(fontsize=7, ncol=3)
    ax1.set_title(title)
    per_sec: Counter[int] = Counter(int(s.t) for s in samples)
    fails: Counter[int] = Counter(int(s.t) for s in samples if not s.ok)
    secs = sorted(per_sec)
    ax2.plot(secs, [per_sec[s] for s in secs], label="requests/s (all endpoints)")
    ax2.plot(secs, [fails.get(s, 0) for s in secs], color="red", label="failures/s")
    ax2.set_xlabel("seconds since start")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        if hold is not None:
            ax.axvspan(hold[0], hold[1], color="grey", alpha=0.08)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _table(rows: dict[str, dict[str, float]], key: str) -> list[str]:
    lines = [
        f"| {key} | requests | failures | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, st in rows.items():
        lines.append(
            f"| {name} | {st['count']} | {st['failures']} | {st['p50_ms']} | {st['p90_ms']} | "
            f"{st['p99_ms']} | {st['max_ms']} |"
        )
    return lines


def write_report(
    out_dir: Path, samples: Sequence[Sample], summary: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """report.md + latency.png + summary.json (+ samples.jsonl) in ``out_dir``; returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hold = (meta.get("hold_start", 0.0), meta.get("hold_end", 0.0))
    plot(
        samples,
        out_dir / "latency.png",
        title=f"{meta.get('host', '')} at {summary['target_rate']:g} req/s",
        slo_ms=summary["slo"]["p99_ms"],
        hold=hold,
    )
    atomic_write_json(out_dir / "summary.json", {"meta": meta, **summary})
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(asdict(s)) + "\n" for s in samples))
    verdict = "MET" if summary["slo_met"] else "MISSED: " + "; ".join(summary["slo_violations"])
    lines = [
        f"# Load test: {meta.get('host', '')}",
        "",
        f"- SLO (p99 ≤ {summary['slo']['p99_ms']:g} ms on /retrieve at the target rate): **{verdict}**",
        f"- target {summary['target_rate']:g} req/s, achieved {summary['achieved_rate']:g} req/s over a "
        f"{summary['hold_seconds']:g} s hold (after a {meta.get('ramp', 0):g} s ramp)",
    ]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k not in {"host", "ramp", "hold_start", "hold_end"}]
    lines += [
        "",
        "## By endpoint",
        "",
        *_table(summary["by_endpoint"], "endpoint"),
        "",
        "## /retrieve by arm",
        "",
        *_table(summary["by_arm"], "arm"),
    ]
    if summary["by_bucket"]:
        lines += ["", "## /retrieve by query bucket", "", *_table(summary["by_bucket"], "bucket")]
    lines += ["", "## Failures", ""]
    if summary["failures"]:
        lines += ["| endpoint and error | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in summary["failures"].items()]
    else:
        lines.append("none")
    lines += ["", "![latency over time](latency.png)", ""]
    md = out_dir / "report.md"
    atomic_write_text(md, "\n".join(lines))
    return md
