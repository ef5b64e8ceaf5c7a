"""Table 1: markdown (mean ± 95% CI over seeds), a PNG bar chart, and the JSON of every number."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_path, atomic_write_json, atomic_write_text

MAIN = ("ct_recall@100", "qr_recall@100", "ndcg@4")
SLICES = (
    "ct_recall@100/freq",
    "ct_recall@100/clean",
    "ct_recall@100/typo",
    "ct_recall@100/seen",
    "ct_recall@100/unseen",
    "qr_recall@100/freq",
    "qr_recall@100/clean",
    "qr_recall@100/typo",
    "qr_recall@100/ambiguous/clean",
    "qr_recall@100/ambiguous/typo",
    "ndcg@4/freq",
    "ndcg@4/clean",
    "ndcg@4/typo",
    "ndcg@4/ambiguous/clean",
    "sense_coverage@10/clean",
    "sense_coverage@100/clean",
)
CLASSES = tuple(f"{m}/{c}" for m in MAIN for c in ("head", "torso", "tail", "ambiguous"))


def ci95(values: list[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t; nan for one value)."""
    n = len(values)
    if n < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def table(runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """method → metric → {mean, std, ci95, n} over seeds (std with ddof=1; 0 for one seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m, rs in runs.items():
        keys = sorted({k for r in rs for k in r["metrics"]})
        out[m] = {}
        for k in keys:
            vals = [float(r["metrics"][k]) for r in rs if k in r["metrics"]]
            out[m][k] = {
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "ci95": ci95(vals),
                "n": len(vals),
            }
    return out


def _fmt(cell: Mapping[str, float] | None) -> str:
    if not cell:
        return "—"
    half = cell.get("ci95", float("nan"))
    if half != half:
        return f"{100 * cell['mean']:.1f}"
    return f"{100 * cell['mean']:.1f} ± {100 * half:.1f}"


def _grid(tab: Mapping[str, Mapping[str, Any]], cols: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m, cells in tab.items():
        lines.append(f"| {m} | " + " | ".join(_fmt(cells.get(k)) for k in cols) + " |")
    return lines


def write_report(
    out: Path,
    runs: Mapping[str, list[dict[str, Any]]],
    seeds: list[int],
    budget: str,
    pretrained: Mapping[str, float],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    tab = table(runs)
    result: dict[str, Any] = {
        "methods": tab,
        "seeds": seeds,
        "budget": budget,
        "pretrained": dict(pretrained),
        "config": dict(config),
        "runs": {m: [{k: v for k, v in r.items() if k != "metrics"} for r in rs] for m, rs in runs.items()},
    }
    atomic_write_json(out / "table1.json", result)
    present = {k for cells in tab.values() for k in cells}
    graded_extra = sorted(k for k in present if k.endswith("_ndcg@4") and "/" not in k)
    lines = [
        f"# Table 1 — budget `{budget}`, seeds {seeds} (mean ± 95% CI over seeds, percent)",
        "",
        "Macro-averaged over distinct query strings unless marked `/freq` (weighted by test frequency).",
        "",
        "| method | CT Recall@100 | QR Recall@100 | NDCG@4 | never-exposed share of top-100 |",
        "|---|---|---|---|---|",
        f"| pretrained (start) | {100 * pretrained.get('ct_recall@100', 0):.1f} | "
        f"{100 * pretrained.get('qr_recall@100', 0):.1f} | {100 * pretrained.get('ndcg@4', 0):.1f} | "
        f"{100 * pretrained.get('unexposed_share@100', 0):.1f} |",
    ]
    for m, cells in tab.items():
        lines.append(
            f"| {m} | {_fmt(cells.get('ct_recall@100'))} | {_fmt(cells.get('qr_recall@100'))} | "
            f"{_fmt(cells.get('ndcg@4'))} | {_fmt(cells.get('unexposed_share@100'))} |"
        )
    slices = [k for k in (*graded_extra, *SLICES) if k in present]
    if slices:
        lines += ["", "## Slices", "", "clean / typo: query strings without / with a typo; seen / unseen: CT pairs "
                  "already clicked for that string in training or not; sense coverage: share of an ambiguous "
                  "query's senses with a video in the top k.", ""]
        lines += _grid(tab, slices)
    lines += ["", "## By query class", "", *_grid(tab, [k for k in CLASSES if k in present])]
    lines += [
        "",
        "## Runs",
        "",
        "| method | seed | train queries | positive terms / query | loss first→last | grad norm (median) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, rs in runs.items():
        for r in rs:
            if "loss_first" in r:
                terms = r.get("batch", {}).get("terms_per_query")
                gn = r.get("grad_norm_median")
                lines.append(
                    f"| {m} | {r['seed']} | {r['train_queries']} | {'—' if terms is None else f'{terms:.1f}'} | "
                    f"{r['loss_first']:.3f} → {r['loss_last']:.3f} | {'—' if gn is None else f'{gn:.2f}'} | "
                    f"{r['train_seconds']:.0f} |"
                )
    atomic_write_text(out / "table1.md", "\n".join(lines) + "\n")
    _plot(out / "table1.png", tab, pretrained)
    return result


def _plot(
    path: Path, tab: Mapping[str, Mapping[str, Mapping[str, float]]], pretrained: Mapping[str, float]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(tab)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric in zip(axes, MAIN, strict=True):
        means = [100 * tab[m].get(metric, {}).get("mean", 0.0) for m in methods]
        stds = [100 * np.nan_to_num(tab[m].get(metric, {}).get("ci95", 0.0)) for m in methods]
        x = np.arange(len(methods))
        colors = ["tab:red" if m.startswith("crops") else "tab:gray" for m in methods]
        ax.bar(x, means, yerr=stds, color=colors, capsize=3)
        if metric in pretrained:
            ax.axhline(100 * pretrained[metric], color="k", ls="--", lw=1, label="pretrained")
            ax.legend(loc="lower right")
        ax.set_xticks(x, methods, rotation=45, ha="right")
        ax.set_title(metric)
        ax.set_ylabel("%")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
