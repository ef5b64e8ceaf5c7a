"""The mining report: counts per level and source, positives the legacy stack never exposed, the α
sweep (precision/recall of added positives vs truth, on queries θ was not fitted on), θ calibration.
Writes ``report.json``, ``report.md`` and PNG plots next to them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from core.atomic import atomic_write_json, atomic_write_text
from core.samples import LEVELS
from training.engine.discriminator import expected_calibration_error, reliability_table
from training.engine.tables import read_table

if TYPE_CHECKING:
    from training.engine.context import MineContext


def _annotated(con: Any, name: str, has_truth: bool, has_grade: bool = False) -> dict[str, np.ndarray]:
    """θ, exposed-ever, already-clicked, truth label (and grade) and held-out flag of every candidate pair."""
    rel = "COALESCE(tr.y, 0)" if has_truth else "0"
    join = "LEFT JOIN truth tr ON tr.query = c.query AND tr.video_id = c.video_id" if has_truth else ""
    grade = "COALESCE(tg.grade, 0)" if has_grade else "-1"
    if has_grade:
        join += "\nLEFT JOIN truth_grade tg ON tg.query = c.query AND tg.video_id = c.video_id"
    rel_ = con.sql(f"""
SELECT COALESCE(t.theta, 0.0) AS theta, COALESCE(l.exposed_ever, FALSE) AS exposed,
       COALESCE(l.level, 0) = {LEVELS["p0_click"]} AS clicked, {rel} = 1 AS relevant,
       COALESCE(q.is_eval, FALSE) AS is_eval, CAST({grade} AS INT) AS grade
FROM {name} c
LEFT JOIN theta t ON t.query = c.query AND t.video_id = c.video_id
LEFT JOIN log_samples l ON l.query = c.query AND l.video_id = c.video_id
LEFT JOIN qflags q ON q.query = c.query
{join}
""")
    # duckdb 2.x names it to_arrow_table; 1.x fetch_arrow_table
    t = rel_.to_arrow_table() if hasattr(rel_, "to_arrow_table") else rel_.fetch_arrow_table()
    return {k: t.column(k).to_numpy(zero_copy_only=False) for k in t.column_names}


def alpha_sweep(
    theta: np.ndarray,
    relevant: np.ndarray,
    never_exposed: np.ndarray,
    alphas: tuple[float, ...],
    strict: bool = True,
    grade: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Precision / recall of the kept candidates (θ > α, or ≥ for P3) against the truth labels.
    Recall is relative to the relevant candidates the perspective offered (θ's own recall). With
    ``grade`` (the true grade of each pair), the kept candidates' share per grade too."""
    rows: list[dict[str, Any]] = []
    n_rel = int(relevant.sum())
    for a in alphas:
        kept = theta > a if strict else theta >= a
        k = int(kept.sum())
        tp = int((kept & relevant).sum())
        rows.append(
            {
                "alpha": float(a),
                "kept": k,
                "kept_never_exposed": int((kept & never_exposed).sum()),
                "precision": tp / k if k else float("nan"),
                "recall": tp / n_rel if n_rel else float("nan"),
            }
        )
        if grade is not None and k:
            rows[-1]["by_grade"] = {str(g): float((grade[kept] == g).mean()) for g in range(4)}
    return rows


def _p3_truth_grades(p3: pa.Table, truth_q: Path | None) -> np.ndarray | None:
    """True grade (0..3) of each P3 description for its query (-1 where unknown), from what the
    simulated LLM says it described and the world's truth table (which the LLM never reads)."""
    if truth_q is None or not truth_q.is_file() or "about_topic" not in p3.column_names:
        return None
    import pyarrow.parquet as pq

    from world.relevance import grade_described

    tq = pq.read_table(truth_q, columns=["query", "topic_ids", "intent_ids", "facet", "modifier"]).to_pylist()
    need = {r["query"]: (set(r["topic_ids"] or ()), set(r["intent_ids"] or ()), r["facet"], r["modifier"]) for r in tq}
    out = np.full(p3.num_rows, -1, dtype=np.int8)
    cols = zip(p3.column("query").to_pylist(), p3.column("about_topic").to_pylist(),
               p3.column("about_intent").to_pylist(), p3.column("about_modifier").to_pylist(), strict=True)
    for i, (q, t, it, mod) in enumerate(cols):
        n = need.get(q)
        if n is not None and t is not None and it is not None:
            out[i] = grade_described(*n, int(t), int(it), mod)
    return out


def build_report(m: MineContext, total_seconds: float) -> dict[str, Any]:
    cfg = m.cfg
    samples = read_table(m.out / "samples.parquet")
    rep: dict[str, Any] = {
        "engine": m.engine_name,
        "alpha": cfg.alpha,
        "config": cfg.__dict__ | {"alpha_sweep": list(cfg.alpha_sweep)},
        "inputs": {
            "logs": str(m.inp.logs),
            "videos": str(m.inp.videos),
            "labels": str(m.inp.labels) if m.inp.labels else None,
        },
        "rows": samples.num_rows,
        "queries": len(set(samples.column("query").to_pylist())),
    }
    src = samples.column("source").to_pylist()
    lvl = samples.column("level").to_pylist()
    exp = samples.column("exposed_ever").to_pylist()
    rep["per_source"] = dict(sorted(Counter(src).items()))
    rep["per_level"] = {str(k): v for k, v in sorted(Counter(lvl).items(), reverse=True)}
    rep["never_exposed_in_samples"] = {
        s: sum(1 for x, e in zip(src, exp, strict=True) if x == s and e is False)
        for s in ("p1_reformulation", "p2_rec")
    }

    has_truth = m.inp.labels is not None
    con = m.duck()
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    has_grade = has_truth and "truth_grade" in views
    persp: dict[str, Any] = {}
    sweeps: dict[str, list[dict[str, float]]] = {}
    calib_p: list[np.ndarray] = []
    calib_y: list[np.ndarray] = []
    for name, label in (("p1_candidates", "P1"), ("p2_candidates", "P2")):
        a = _annotated(con, name, has_truth, has_grade)
        th, never = a["theta"].astype(np.float64), ~a["exposed"].astype(bool)
        kept = th > cfg.alpha
        info: dict[str, Any] = {
            "candidates": len(th),
            "candidates_never_exposed": int(never.sum()),
            "kept": int(kept.sum()),
            "kept_never_exposed": int((kept & never).sum()),
        }
        if has_truth:
            # "added" positives: held-out queries, pairs not already clicked for the query (P0)
            ev = a["is_eval"].astype(bool) & ~a["clicked"].astype(bool)
            rel = a["relevant"].astype(bool)
            info["eval_candidates"] = int(ev.sum())
            info["eval_relevant_rate"] = float(rel[ev].mean()) if ev.any() else float("nan")
            sweeps[label] = alpha_sweep(
                th[ev], rel[ev], never[ev], cfg.alpha_sweep, grade=a["grade"][ev] if has_grade else None
            )
            calib_p.append(th[ev])
            calib_y.append(rel[ev].astype(np.float64))
        persp[label] = info
    con.close()

    p3 = read_table(m.work / "p3.parquet")
    if "truth_ok" not in p3.column_names:
        p3 = p3.append_column("truth_ok", pa.nulls(p3.num_rows, pa.bool_()))
    p3_keep = p3.column("keep").to_pylist()
    persp["P3"] = {
        "descriptions": p3.num_rows,
        "kept": int(sum(p3_keep)),
        "kept_never_exposed": int(sum(p3_keep)),  # synthetic texts: never shown by the legacy stack
        "reasons": dict(Counter(p3.column("reason").to_pylist())),
    }
    truth_q = m.inp.labels.parent / "queries.parquet" if m.inp.labels is not None else None
    if truth_q is not None and truth_q.is_file() and p3.num_rows:
        # evaluation only (the LLM never reads it): which kinds of queries P3 was asked about
        import pyarrow.parquet as pq

        tq = pq.read_table(truth_q, columns=["query", "query_class", "ambiguous"]).to_pydict()
        kind = {q: (c, bool(a)) for q, c, a in zip(tq["query"], tq["query_class"], tq["ambiguous"], strict=True)}
        asked = sorted(set(p3.column("query").to_pylist()))
        per_q = Counter(p3.column("query").to_pylist())
        persp["P3"]["queries_asked"] = len(asked)
        persp["P3"]["queries_by_class"] = dict(Counter(kind.get(q, ("?", False))[0] for q in asked))
        amb = [q for q in asked if kind.get(q, ("", False))[1]]
        persp["P3"]["ambiguous_queries"] = len(amb)
        persp["P3"]["ambiguous_head_queries"] = sum(1 for q in amb if kind[q][0] == "head")
        persp["P3"]["descriptions_for_ambiguous"] = sum(per_q[q] for q in amb)
    p3_stats = m.work / "p3_stats.json"
    if p3_stats.is_file():
        persp["P3"]["llm"] = json.loads(p3_stats.read_text())
    if p3.num_rows:
        th3 = np.array([t if t is not None else -1.0 for t in p3.column("theta").to_pylist()])
        scored = th3 >= 0  # passed the length / copy / duplicate checks
        persp["P3"]["kept_vs_alpha"] = [{"alpha": a, "kept": int((scored & (th3 >= a)).sum())} for a in cfg.alpha_sweep]
        ok = p3.column("truth_ok").to_pylist()
        idx = np.flatnonzero(scored)
        labelled = bool(len(idx)) and all(ok[i] is not None for i in idx)
        if labelled:
            # simulated LLM: how many descriptions fit the senses it read in the query (its own errors)
            persp["P3"]["fits_llm_reading_rate_before_theta"] = float(np.mean([bool(ok[i]) for i in idx]))
        grades = _p3_truth_grades(p3, truth_q)
        if grades is not None and len(idx) and (grades[idx] >= 0).all():
            # evaluation only: each description graded against the query's true need, as P1/P2 are
            rel = grades >= 2
            sweeps["P3"] = alpha_sweep(
                th3[scored], rel[scored], np.ones(len(idx), bool), cfg.alpha_sweep, strict=False, grade=grades[scored]
            )
            persp["P3"]["truly_fitting_rate_before_theta"] = float(rel[scored].mean())
            persp["P3"]["grade_mix_before_theta"] = {str(g): float((grades[scored] == g).mean()) for g in range(4)}
        elif labelled:  # no truth table (e.g. a handmade world): against the LLM's own error labels
            rel = np.array([bool(x) for x in ok], dtype=bool)
            sweeps["P3"] = alpha_sweep(th3[scored], rel[scored], np.ones(len(idx), bool), cfg.alpha_sweep, strict=False)
    rep["perspectives"] = persp
    rep["alpha_sweep"] = sweeps

    fit_path = m.work / "theta_fit.json"
    theta_fit = json.loads(fit_path.read_text()) if fit_path.is_file() else {}
    rep["theta"] = {k: v for k, v in theta_fit.items() if k != "reliability"}
    if calib_p:
        p_all, y_all = np.concatenate(calib_p), np.concatenate(calib_y)
        rep["theta"]["ece_eval_candidates"] = expected_calibration_error(p_all, y_all)
        rep["theta"]["eval_candidates"] = len(p_all)
        rep["theta"]["reliability_eval_candidates"] = reliability_table(p_all, y_all)
    tpath = m.work / "timings.json"
    steps = json.loads(tpath.read_text()) if tpath.is_file() else {}
    rep["timings_s"] = {k: v["seconds"] for k, v in steps.items()}  # last run of each step
    rep["timings_engine"] = {k: v["engine"] for k, v in steps.items()}
    rep["mine_seconds_all_steps"] = round(sum(rep["timings_s"].values()), 2)
    rep["total_seconds"] = round(total_seconds, 2)  # this invocation (resumed steps are skipped)
    _plots(m.out, sweeps, rep["theta"].get("reliability_eval_candidates"), theta_fit.get("reliability"))
    atomic_write_json(m.out / "report.json", rep)
    atomic_write_text(m.out / "report.md", render_markdown(rep))
    return rep


def _plots(out: Path, sweeps: dict[str, list[dict[str, float]]], rel_eval: Any, rel_fit: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if sweeps:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (name, rows) in enumerate(sweeps.items()):
            a = [r["alpha"] for r in rows]
            ax.plot(a, [r["precision"] for r in rows], "o-", color=f"C{i}", label=f"{name} precision")
            ax.plot(a, [r["recall"] for r in rows], "s--", color=f"C{i}", label=f"{name} recall")
        ax.set_xlabel("α (θ threshold)")
        ax.set_ylabel("vs truth (P1/P2: held-out queries; P3: graded descriptions)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("Added positives: precision / recall vs α")
        fig.tight_layout()
        fig.savefig(out / "alpha_sweep.png", dpi=110)
        plt.close(fig)
    if rel_eval or rel_fit:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for rows, lab in ((rel_fit, "θ test split"), (rel_eval, "P1+P2 candidates, held-out queries")):
            if rows:
                ax.plot([r["mean_prob"] for r in rows], [r["rate"] for r in rows], "o-", label=lab)
        ax.set_xlabel("θ (predicted probability)")
        ax.set_ylabel("observed relevant rate")
        ax.legend(fontsize=8)
        ax.set_title("θ reliability")
        fig.tight_layout()
        fig.savefig(out / "theta_reliability.png", dpi=110)
        plt.close(fig)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if x != x else f"{x:.3f}"
    return str(x)


def render_markdown(rep: dict[str, Any]) -> str:
    lines = [
        "# CroPS data engine: mining report",
        "",
        f"Engine **{rep['engine']}**, α = {rep['alpha']}, {rep['rows']} samples over {rep['queries']} queries, "
        f"{rep['total_seconds']} s this run ({rep['mine_seconds_all_steps']} s over all steps). "
        f"Logs: `{rep['inputs']['logs']}`; labels: `{rep['inputs']['labels']}`.",
        "",
        "## Samples per source (HLA level)",
        "",
        "| source | level | rows |",
        "|---|---|---|",
    ]
    for s, n in sorted(rep["per_source"].items(), key=lambda kv: -LEVELS.get(kv[0], 0)):
        lines.append(f"| {s} | {LEVELS.get(s, '?')} | {n} |")
    lines += ["", "| level | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rep["per_level"].items()]
    lines += [
        "",
        "## Added positives the legacy stack never exposed",
        "",
        "| perspective | candidates | never exposed | kept (θ>α) | kept & never exposed | in samples, never exposed |",
        "|---|---|---|---|---|---|",
    ]
    ne = rep["never_exposed_in_samples"]
    for name, key in (("P1", "p1_reformulation"), ("P2", "p2_rec")):
        p = rep["perspectives"][name]
        lines.append(
            f"| {name} | {p['candidates']} | {p['candidates_never_exposed']} | {p['kept']} | "
            f"{p['kept_never_exposed']} | {ne[key]} |"
        )
    p3 = rep["perspectives"]["P3"]
    lines.append(
        f"| P3 | {p3['descriptions']} descriptions | all (synthetic) | {p3['kept']} (θ≥α) | "
        f"{p3['kept_never_exposed']} | {rep['per_source'].get('p3_llm', 0)} |"
    )
    if p3.get("reasons"):
        lines += ["", "P3 filter: " + ", ".join(f"{k}: {v}" for k, v in sorted(p3["reasons"].items()))]
    if "queries_asked" in p3:
        lines += [
            "",
            f"P3 was asked about {p3['queries_asked']} queries ({p3['queries_by_class']}), "
            f"{p3['ambiguous_queries']} of them ambiguous ({p3['ambiguous_head_queries']} head), "
            f"with {p3['descriptions_for_ambiguous']} descriptions for the ambiguous ones.",
        ]
    if "truly_fitting_rate_before_theta" in p3:
        mix = p3.get("grade_mix_before_theta", {})
        lines += [
            "",
            f"P3 descriptions graded against the query's true need (the world's truth, which the LLM never "
            f"reads): {100 * p3['truly_fitting_rate_before_theta']:.1f}% grade ≥ 2 before θ "
            f"(grades 0/1/2/3: " + "/".join(f"{100 * mix.get(str(g), 0):.0f}%" for g in range(4)) + ")"
            + (f"; {100 * p3['fits_llm_reading_rate_before_theta']:.1f}% fit the senses the LLM read in the query"
               if "fits_llm_reading_rate_before_theta" in p3 else "") + ".",
        ]
    if rep["alpha_sweep"]:
        lines += [
            "",
            "## α sweep (held-out queries, vs truth)",
            "",
            "Candidates of queries θ was not fitted on, minus pairs already clicked (P0). Precision: "
            "kept candidates that are truly relevant (grade ≥ 2). Recall: kept relevant / relevant "
            "candidates offered by the perspective. P3: every scored description, kept at θ ≥ α.",
            "",
            "| α | " + " | ".join(f"{n} kept | {n} prec | {n} recall" for n in rep["alpha_sweep"]) + " |",
            "|---|" + "---|---|---|" * len(rep["alpha_sweep"]),
        ]
        names = list(rep["alpha_sweep"])
        for i, r0 in enumerate(rep["alpha_sweep"][names[0]]):
            cells = []
            for n in names:
                r = rep["alpha_sweep"][n][i]
                cells += [_fmt(r["kept"]), _fmt(r["precision"]), _fmt(r["recall"])]
            lines.append(f"| {r0['alpha']:.1f} | " + " | ".join(cells) + " |")
        graded = {n: rows for n, rows in rep["alpha_sweep"].items() if any("by_grade" in r for r in rows)}
        if graded:
            lines += [
                "",
                "Kept candidates by true grade (share of grade 0 / 1 / 2 / 3; grade 1 = the query's topic, "
                "another facet):",
                "",
                "| α | " + " | ".join(f"{n} g0/g1/g2/g3" for n in graded) + " |",
                "|---|" + "---|" * len(graded),
            ]
            for i, r0 in enumerate(next(iter(graded.values()))):
                cells = []
                for rows in graded.values():
                    bg = rows[i].get("by_grade")
                    cells.append("/".join(f"{100 * bg[str(g)]:.0f}" for g in range(4)) if bg else "—")
                lines.append(f"| {r0['alpha']:.1f} | " + " | ".join(cells) + " |")
        lines += ["", "![alpha sweep](alpha_sweep.png)"]
    th = rep["theta"]
    if th and not th.get("fake_scorer"):
        lines += [
            "",
            "## θ (MiniLM-L6 bi-encoder features → logistic head → Platt scaling)",
            "",
            f"- fitted on {th.get('n_pairs')} pairs ({th.get('label_origin')}), {th.get('fit_total_seconds', 0):.1f} s",
            f"- test split: AUC {_fmt(th.get('auc_test'))}, ECE {_fmt(th.get('ece_test'))} "
            f"(before Platt {_fmt(th.get('ece_test_raw'))}), Brier {_fmt(th.get('brier_test'))}",
        ]
        if "recalibration" in th:
            rc = th["recalibration"]
            lines.append(
                f"- Platt refitted on all {rc['pairs']} candidates of the fit-half queries: ECE there "
                f"{_fmt(rc['ece_fit_candidates_before'])} → {_fmt(rc['ece_fit_candidates_after'])}"
            )
        if "ece_eval_candidates" in th:
            lines.append(
                f"- P1+P2 candidates of held-out queries ({th['eval_candidates']} pairs): "
                f"ECE {_fmt(th['ece_eval_candidates'])}"
            )
        lines += ["", "![theta reliability](theta_reliability.png)"]
    lines += ["", "## Step timings (s, last run of each step; the report step itself excluded)", ""]
    lines += [f"- {k}: {v} ({rep['timings_engine'].get(k, '')})" for k, v in rep["timings_s"].items()]
    return "\n".join(lines) + "\n"
