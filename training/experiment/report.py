"""Table 1: markdown (mean ± std over seeds), a PNG bar chart, and the JSON of every number."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_json, atomic_write_text

MAIN = ("ct_recall@100", "qr_recall@100", "ndcg@4")


def _fmt(cell: Mapping[str, float] | None) -> str:
    if not cell:
        return "—"
    return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"


def write_report(
    out: Path,
    runs: Mapping[str, list[dict[str, Any]]],
    seeds: list[int],
    budget: str,
    pretrained: Mapping[str, float],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    from training.experiment.runner import table

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
    extra = sorted({k for cells in tab.values() for k in cells if k not in MAIN})
    lines = [
        f"# Table 1 — budget `{budget}`, seeds {seeds} (mean ± std, percent)",
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
    lines += [
        "",
        "## By query class",
        "",
        "| method | " + " | ".join(extra) + " |",
        "|---|" + "---|" * len(extra),
    ]
    for m, cells in tab.items():
        lines.append(f"| {m} | " + " | ".join(_fmt(cells.get(k)) for k in extra) + " |")
    lines += [
        "",
        "## Runs",
        "",
        "| method | seed | train queries | loss first→last | train s |",
        "|---|---|---|---|---|",
    ]
    for m, rs in runs.items():
        for r in rs:
            if "loss_first" in r:
                lines.append(
                    f"| {m} | {r['seed']} | {r['train_queries']} | {r['loss_first']:.3f} → "
                    f"{r['loss_last']:.3f} | {r['train_seconds']:.0f} |"
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
    import numpy as np

    methods = list(tab)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric in zip(axes, MAIN, strict=True):
        means = [100 * tab[m].get(metric, {}).get("mean", 0.0) for m in methods]
        stds = [100 * tab[m].get(metric, {}).get("std", 0.0) for m in methods]
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
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
