"""The per-arm report of an online run: ``report.json``, ``report.md`` and ``report.png``.

Inputs are the run's ``requests.parquet`` and ``sessions.parquet`` (written by :mod:`online.driver`).
Every metric is a ratio of per-user sums; deltas are relative to the control arm with 95% bootstrap
CIs over users and delta-method p-values (:mod:`online.stats`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_path, atomic_write_json, atomic_write_text
from online.stats import METRICS, PAPER_DELTAS, ArmSums, compare, sessions_to_detect

LABELS = {
    "ctr": "CTR (clicks / exposures)",
    "long_play_rate": "long-play rate (long plays / exposures)",
    "reformulation_rate": "reformulation rate (requests followed by a reformulation)",
    "session_success": "session success (a click at grade ≥ 2)",
    "never_exposed_share": "never-exposed share of exposures",
    "recall_relevant": "recall@100 of truly relevant videos (grade ≥ 2)",
}


def per_user(requests: pa.Table, sessions: pa.Table) -> dict[str, ArmSums]:
    """Per-arm, per-user sums of every numerator and denominator in :data:`online.stats.METRICS`."""
    r = requests.to_pydict()
    s = sessions.to_pydict()
    acc: dict[str, dict[str, dict[str, float]]] = {}

    def bucket(arm: str, user: str) -> dict[str, float]:
        return acc.setdefault(arm, {}).setdefault(user, {k: 0.0 for m in METRICS.values() for k in m})

    for i in range(len(r["request_id"])):
        b = bucket(r["arm"][i], r["user_id"][i])
        b["exposures"] += r["exposures"][i]
        b["clicks"] += r["clicks"][i]
        b["long_plays"] += r["long_plays"][i]
        b["never_exposed"] += r["never_exposed"][i]
        b["requests"] += 1
        b["reformulated"] += bool(r["reformulated"][i])
        rec = r["recall"][i]
        if rec is not None and not math.isnan(rec):
            b["recall_sum"] += rec
            b["recall_requests"] += 1
    for i in range(len(s["session_id"])):
        b = bucket(s["arm"][i], s["user_id"][i])
        b["sessions"] += 1
        b["successes"] += bool(s["success"][i])
    out = {}
    for arm, users in acc.items():
        names = sorted(users)
        keys = {k for m in METRICS.values() for k in m}
        out[arm] = ArmSums(np.array(names), {k: np.array([users[u][k] for u in names]) for k in keys})
    return out


def build_report(requests: pa.Table, sessions: pa.Table, control: str, *, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Per-arm metrics, deltas vs ``control`` and the sample size for a 0.5% relative CTR change."""
    arms = per_user(requests, sessions)
    if control not in arms:
        raise ValueError(f"control arm {control!r} served no user (arms seen: {sorted(arms)})")
    per_arm: dict[str, Any] = {}
    for name, a in sorted(arms.items()):
        per_arm[name] = {
            "users": len(a.users),
            "sessions": int(a.sums["sessions"].sum()),
            "requests": int(a.sums["requests"].sum()),
            "exposures": int(a.sums["exposures"].sum()),
            **{m: a.ratio(m) for m in METRICS},
        }
    deltas: dict[str, Any] = {}
    for name, a in sorted(arms.items()):
        if name == control:
            continue
        deltas[name] = {m: compare(arms[control], a, m, n_boot=n_boot, seed=seed) for m in METRICS}
        for m, paper in PAPER_DELTAS.items():
            d = deltas[name][m]["delta_rel"]
            deltas[name][m]["paper_delta_rel"] = paper
            deltas[name][m]["sign_agrees_with_paper"] = None if d is None else (d > 0) == (paper > 0)
    n_sessions = sum(v["sessions"] for v in per_arm.values())
    n_users = sum(v["users"] for v in per_arm.values())
    power = sessions_to_detect(list(arms.values()), n_sessions / max(n_users, 1))
    return {"control": control, "arms": per_arm, "deltas": deltas, "power_ctr_0.5pct": power,
            "bootstrap": {"resamples": n_boot, "unit": "user", "level": 0.95, "seed": seed}}


def _pct(x: float | None, nd: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:+.{nd}f}%"


def _f(x: float | None, nd: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def markdown(rep: dict[str, Any], title: str, command: str | None = None) -> str:
    arms = rep["arms"]
    lines = [f"# {title}", ""]
    if command:
        lines += ["Reproduce:", "", "```bash", command, "```", ""]
    lines += ["| metric | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for k in ("users", "sessions", "requests", "exposures"):
        lines.append(f"| {k} | " + " | ".join(str(arms[a][k]) for a in arms) + " |")
    for m in METRICS:
        lines.append(f"| {LABELS[m]} | " + " | ".join(_f(arms[a][m]) for a in arms) + " |")
    lines.append("")
    for arm, d in rep["deltas"].items():
        lines += [f"## {arm} vs {rep['control']} (relative delta, 95% bootstrap CI over users, p-value)", "",
                  "| metric | delta | 95% CI | p | paper | same sign as paper |", "|---|---|---|---|---|---|"]
        for m in METRICS:
            x = d[m]
            paper = x.get("paper_delta_rel")
            agree = x.get("sign_agrees_with_paper")
            lines.append(
                f"| {m} | {_pct(x['delta_rel'])} | [{_pct(x['ci_low'])}, {_pct(x['ci_high'])}] | "
                f"{_f(x['p_value'], 3)} | {_pct(paper, 3) if paper is not None else ''} | "
                f"{'' if paper is None else ('yes' if agree else 'no')} |"
            )
        lines.append("")
    p = rep["power_ctr_0.5pct"]
    if p.get("sessions_per_arm"):
        lines += [
            f"Detecting a {100 * p['rel_change']:.1f}% relative CTR change (two-sided α = {p['alpha']}, power "
            f"{p['power']}) needs about **{p['sessions_per_arm']:,} sessions per arm** "
            f"({p['users_per_arm']:,} users per arm; per-user variance pooled over the arms of this run).", ""]
    lines += ["![per-arm deltas](report.png)", ""]
    return "\n".join(lines)


def plot(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(METRICS)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(metrics) * max(1, len(rep["deltas"])) + 1.2))
    y = 0
    ticks, names = [], []
    for arm, d in rep["deltas"].items():
        for m in metrics:
            x = d[m]
            if x["delta_rel"] is not None:
                lo = x["ci_low"] if x["ci_low"] is not None else x["delta_rel"]
                hi = x["ci_high"] if x["ci_high"] is not None else x["delta_rel"]
                err = [[100 * (x["delta_rel"] - lo)], [100 * (hi - x["delta_rel"])]]
                ax.errorbar(100 * x["delta_rel"], y, xerr=err, fmt="o", capsize=3, color="C0")
            if m in PAPER_DELTAS:
                ax.plot(100 * PAPER_DELTAS[m], y, "x", color="C3")
            ticks.append(y)
            names.append(f"{arm}: {m}")
            y += 1
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(ticks, names)
    ax.invert_yaxis()
    ax.set_xlabel(f"relative delta vs {rep['control']} (%), 95% bootstrap CI; x = paper")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(run_dir: Path, control: str, *, title: str = "Online A/B", command: str | None = None,
                 n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Read ``run_dir``'s tables and write report.json/.md/.png next to them."""
    requests = pq.read_table(run_dir / "requests.parquet")
    sessions = pq.read_table(run_dir / "sessions.parquet")
    rep = build_report(requests, sessions, control, n_boot=n_boot, seed=seed)
    atomic_write_json(run_dir / "report.json", rep)
    plot(rep, run_dir / "report.png")
    atomic_write_text(run_dir / "report.md", markdown(rep, title, command))
    return rep
