"""What the loss sees in a batch, per method: the numbers behind the HLA-batch fix.

For each method (default: the paper's batch ``crops``, the old batch ``crops-inherit`` and ``dpr``)
this draws the run's first batches with the budget's recipe and reports, per query:

- the docs drawn per level (the quota as realised) and the H-InfoNCE positive terms per level;
- the true grade mix of the pairs at each level, and the relevant (grade ≥ 2) in-batch docs used
  as level-0 negatives (from the world's ``truth/relevance.parquet``);
- the gradient norm of the loss at the start of training, before clipping (median over batches).

``crops experiment batch-audit --world W --out O`` writes ``O/batch_audit.{json,md}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_json, atomic_write_text
from core.normalize import normalize_text

DEFAULT_METHODS = ("crops", "crops-inherit", "dpr")


def _grades(world: Path, rows: Any, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """True grade of (normalised query, video id) pairs (absent from the truth = grade 0)."""
    import duckdb
    import pyarrow as pa

    raw_of: dict[str, list[str]] = {}
    for q in set(rows["query"]):
        raw_of.setdefault(normalize_text(str(q)), []).append(str(q))
    flat = [(raw, nq, v) for nq, v in pairs for raw in raw_of.get(nq, [])]
    con = duckdb.connect()
    con.execute("SET threads TO 1")
    cols = {"raw": [f[0] for f in flat], "nq": [f[1] for f in flat], "vid": [f[2] for f in flat]}
    con.register("pairs", pa.table(cols))
    got = con.execute(
        "SELECT p.nq, p.vid, MAX(r.grade) FROM pairs p JOIN read_parquet(?) r "
        "ON r.query = p.raw AND r.video_id = p.vid GROUP BY 1, 2",
        [str(world / "truth" / "relevance.parquet")],
    ).fetchall()
    con.close()
    out = {(nq, v): 0 for nq, v in pairs}
    out.update({(nq, v): int(g) for nq, v, g in got})
    return out


def _lookup(grades: dict[tuple[str, str], int]) -> Callable[[str, str], int | None]:
    return lambda q, d: grades.get((q, d))


def audit(
    world: Path | str,
    out: Path | str,
    methods: Sequence[str] = DEFAULT_METHODS,
    budget: str = "full",
    *,
    samples: Path | str | None = None,
    batches: int = 10,
    grad_batches: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Batch statistics and start-of-training gradient norms per method (see module docstring)."""
    import torch

    from training.baselines.methods import METHODS
    from training.experiment.runner import Experiment
    from training.trainer.data import BatchSampler, batch_stats, parse_quota
    from training.trainer.loop import batch_loss

    world, out = Path(world), Path(out)
    exp = Experiment(world, out, budget, samples=Path(samples) if samples else None, progress=progress)
    result: dict[str, Any] = {"world": str(world), "budget": budget, "batches": batches, "methods": {}}
    for name in methods:
        spec = METHODS[name]
        cfg = replace(
            exp.cfg,
            loss=spec.loss,
            hard_negatives="bm25" if spec.hard_negatives == "bm25" else "none",
            pos_level=spec.pos_level,
            term_min_level=spec.term_min_level,
            **dict(spec.overrides),
        )
        ts = exp.training_set(spec)
        hard = exp.bm25_negatives(ts, cfg.n_hard) if spec.hard_negatives == "bm25" else None
        if hard is not None:
            ts.doc_text.update(exp.video_text)
        sampler = BatchSampler(
            ts, cfg.batch_queries, cfg.docs_per_query, 0, hard_negatives=hard,
            sampling=cfg.sampling, quota=parse_quota(cfg.level_quota), batch_labels=cfg.batch_labels,
        )
        pairs: set[tuple[str, str]] = set()
        for step in range(batches):
            b = sampler.batch(step)
            pairs.update((q, d) for q in b.queries for d in b.doc_keys if not d.startswith("text:"))
        grades = _grades(world, exp.rows, pairs)
        stats = batch_stats(sampler, range(batches), grade=_lookup(grades))
        model = exp.new_model(cfg)
        params = model.trainable_parameters()
        norms = []
        for step in range(grad_batches):
            b = sampler.batch(step)
            model.zero_grad(set_to_none=True)
            loss = batch_loss(model, cfg, b.queries, b.doc_texts, b.levels)
            loss.backward()  # type: ignore[no-untyped-call]
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, float("inf"))))
        stats["grad_norm_start"] = float(np.median(norms))
        stats["config"] = {k: getattr(cfg, k) for k in ("sampling", "level_quota", "batch_labels", "loss")}
        result["methods"][name] = stats
        exp.drop_training_set()
    atomic_write_json(out / "batch_audit.json", result)
    atomic_write_text(out / "batch_audit.md", render(result))
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        "# What the loss sees per query (first batches of the run)",
        "",
        f"World `{result['world']}`, budget {result['budget']}, {result['batches']} batches.",
        "",
        "| method | batch | drawn per level | positive terms per level (total) | masked "
        "| relevant in-batch negatives | grad norm at start |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in result["methods"].items():
        drawn = ", ".join(f"{k}: {v:.1f}" for k, v in s["drawn_per_level"].items())
        terms = ", ".join(f"{k}: {v:.1f}" for k, v in s["terms_per_level"].items())
        lines.append(
            f"| {name} | {s['config']['batch_labels']} / {s['config']['sampling']} | {drawn} | {terms} "
            f"({s['terms_per_query']:.1f}) | {s['masked_per_query']:.2f} | "
            f"{s.get('in_batch_relevant_per_query', float('nan')):.2f} | {s['grad_norm_start']:.1f} |"
        )
    lines += ["", "True grade mix of the pairs at each level (share of pairs per grade):", ""]
    for name, s in result["methods"].items():
        mix = s.get("grade_mix", {})
        lines.append(
            f"- {name}: "
            + "; ".join(
                f"level {lvl}: " + ", ".join(f"g{g} {100 * v:.0f}%" for g, v in m.items()) for lvl, m in mix.items()
            )
        )
    return "\n".join(lines) + "\n"
