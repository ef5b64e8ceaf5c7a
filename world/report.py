"""World stats report (markdown + PNG + metrics.json): does the world have the properties we need?

- the bubble: share of truly relevant videos (grade ≥ 2) the legacy stack ever exposed, per query
  class, and for ambiguous head terms each sense's share of demand vs exposure;
- CTR, reformulation rate, feed overlap (feed interactions within the window of a user's search that
  are relevant to it, and how many of those the legacy stack never exposed for that query);
- BM25 and pretrained MiniLM on CT / QR (Recall@100) and graded (NDCG@4), by class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from world.build import read_world_info
from world.evaluation import bm25_run, dense_run, eval_queries, evaluate_run
from world.mechanisms import mechanism_stats, mechanisms_markdown, world_db

GROUPS = ("all", "head", "torso", "tail", "ambiguous")


def _q(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


def world_stats(world: Path) -> dict[str, Any]:
    """Log/truth statistics computed with DuckDB straight from the Parquet files."""
    info = read_world_info(world)
    window_s = info["config"]["rec"]["lean_window_s"]
    con = world_db(world)
    con.execute("CREATE TABLE ex AS SELECT DISTINCT query, video_id FROM slog WHERE stage = 'exposed'")
    out: dict[str, Any] = {}
    # bubble: per query, share of its relevant videos ever exposed for it
    con.execute("""
        CREATE TABLE bub AS
        SELECT r.query, q.query_class, q.ambiguous, count(*) AS n_rel, count(ex.video_id) AS n_exp,
               q.n_train + q.n_test AS freq
        FROM rel r JOIN qs q USING (query) LEFT JOIN ex USING (query, video_id)
        WHERE r.grade >= 2 AND q.n_train + q.n_test > 0 GROUP BY ALL
    """)
    bubble = {}
    for g in GROUPS:
        cond = {"all": "true", "ambiguous": "ambiguous"}.get(g, f"query_class = '{g}'")
        row = _q(
            con,
            f"""SELECT avg(n_exp / n_rel), sum(n_exp * freq / n_rel) / sum(freq), count(*),
                          avg(n_rel) FROM bub WHERE {cond}""",
        )[0]
        bubble[g] = {
            "exposed_share": row[0],
            "exposed_share_freq_weighted": row[1],
            "queries": row[2],
            "mean_relevant": row[3],
        }
    out["bubble"] = bubble
    # ambiguous head terms: demand (true need) vs exposure per sense
    rows = _q(
        con,
        """
        WITH hq AS (SELECT query, surface FROM qs WHERE query_class = 'head' AND ambiguous),
        demand AS (SELECT hq.surface, req.need_topic AS topic, count(*) AS n
                   FROM req JOIN hq USING (query) GROUP BY ALL),
        expo AS (SELECT hq.surface, vi.primary_topic AS topic, count(*) AS n,
                        sum(CAST(s.clicked AS INT)) AS clicks
                 FROM slog s JOIN hq USING (query) JOIN vi USING (video_id)
                 WHERE s.stage = 'exposed' GROUP BY ALL)
        SELECT d.surface, t.key, d.n / sum(d.n) OVER (PARTITION BY d.surface) AS demand_share,
               coalesce(e.n, 0) / sum(coalesce(e.n, 0)) OVER (PARTITION BY d.surface) AS exposure_share,
               coalesce(e.clicks, 0) / sum(coalesce(e.clicks, 0)) OVER (PARTITION BY d.surface) AS click_share
        FROM demand d JOIN topics t ON t.topic_id = d.topic
        LEFT JOIN expo e ON e.surface = d.surface AND e.topic = d.topic
        ORDER BY d.surface, demand_share DESC
    """,
    )
    out["senses"] = [
        {"head": r[0], "sense": r[1], "demand_share": r[2], "exposure_share": r[3], "click_share": r[4]} for r in rows
    ]
    # CTR and reformulation rate by class of the query
    ctr = dict(
        _q(
            con,
            """SELECT q.query_class, avg(CAST(s.clicked AS DOUBLE)) FROM slog s JOIN qs q USING (query)
                          WHERE s.stage = 'exposed' GROUP BY 1""",
        )
    )
    ctr["all"] = _q(con, "SELECT avg(CAST(clicked AS DOUBLE)) FROM slog WHERE stage = 'exposed'")[0][0]
    ctr["ambiguous"] = _q(
        con,
        """SELECT avg(CAST(s.clicked AS DOUBLE)) FROM slog s JOIN qs q USING (query)
                                  WHERE s.stage = 'exposed' AND q.ambiguous""",
    )[0][0]
    out["ctr"] = ctr
    # how much relevance the legacy funnel's stages carry (the HLA log-stage levels 3 / 2 / 1)
    out["stages"] = {
        st: {"rows": n, "mean_grade": g, "relevant_share": r}
        for st, n, g, r in _q(
            con,
            """SELECT s.stage, count(*), avg(coalesce(r.grade, 0)), avg(CAST(coalesce(r.grade, 0) >= 2 AS DOUBLE))
               FROM slog s LEFT JOIN rel r USING (query, video_id) GROUP BY 1 ORDER BY 3 DESC""",
        )
    }
    con.execute("""CREATE TABLE reform AS SELECT r.request_id, q.query_class, q.ambiguous, r.satisfied,
                   EXISTS (SELECT 1 FROM req c WHERE c.parent_request_id = r.request_id) AS reformulated
                   FROM req r JOIN qs q USING (query)""")
    rate = dict(_q(con, "SELECT query_class, avg(CAST(reformulated AS DOUBLE)) FROM reform GROUP BY 1"))
    rate["all"] = _q(con, "SELECT avg(CAST(reformulated AS DOUBLE)) FROM reform")[0][0]
    rate["ambiguous"] = _q(con, "SELECT avg(CAST(reformulated AS DOUBLE)) FROM reform WHERE ambiguous")[0][0]
    out["reformulation_rate"] = rate
    out["satisfied_rate"] = _q(con, "SELECT avg(CAST(satisfied AS DOUBLE)) FROM req")[0][0]
    gaps = _q(
        con,
        """SELECT max(c.ts - p.ts) / 1000.0, min(c.ts - p.ts) / 1000.0, count(*)
                      FROM req c JOIN req p ON c.parent_request_id = p.request_id""",
    )[0]
    out["reformulation_gap_s"] = {"max": gaps[0], "min": gaps[1], "pairs": gaps[2]}
    # feed overlap: feed rows within ± window of a user's (first) search, relevant to that query
    feed = _q(
        con,
        f"""
        WITH o AS (SELECT request_id, user_id, ts, query FROM req WHERE NOT is_reformulation),
        j AS (SELECT o.query, f.video_id, coalesce(r.grade, 0) AS grade,
                     ex.video_id IS NOT NULL AS exposed
              FROM o JOIN rlog f ON f.user_id = o.user_id AND f.ts BETWEEN o.ts - {int(window_s * 1000)}
                                                               AND o.ts + {int(window_s * 1000)}
              LEFT JOIN rel r ON r.query = o.query AND r.video_id = f.video_id
              LEFT JOIN ex ON ex.query = o.query AND ex.video_id = f.video_id
              WHERE f.action <> 'skip')
        SELECT count(*), avg(CAST(grade >= 2 AS DOUBLE)),
               sum(CAST(grade >= 2 AND NOT exposed AS DOUBLE)) / nullif(sum(CAST(grade >= 2 AS DOUBLE)), 0)
        FROM j""",
    )[0]
    out["feed"] = {
        "pairs_in_window": feed[0],
        "relevant_share": feed[1],
        "relevant_never_exposed_share": feed[2],
        "window_s": window_s,
    }
    con.close()
    return out


def write_report(
    world: Path,
    *,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    max_queries: int = 2000,
    out_dir: Path | None = None,
    seed: int = 0,
) -> Path:
    """Compute stats (+ baselines) and write ``report.md``, ``metrics.json`` and PNGs; returns the md path.

    ``encode`` (texts → normalised vectors, the pretrained MiniLM from the CLI) adds the dense baseline.
    """
    world = Path(world)
    info = read_world_info(world)
    out_dir = out_dir or world / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = world_stats(world)
    mech = mechanism_stats(world)
    queries = eval_queries(world, max_per_set=max_queries, seed=seed)
    baselines: dict[str, Any] = {}
    t1 = time.perf_counter()
    baselines["bm25"] = evaluate_run(world, bm25_run(world, queries), only_ranked=True)
    timing = {"stats_s": round(t1 - t0, 1), "bm25_s": round(time.perf_counter() - t1, 1)}
    if encode is not None:
        t2 = time.perf_counter()
        run = dense_run(world, queries, encode, cache_key="minilm")
        baselines["minilm"] = evaluate_run(world, run, only_ranked=True)
        timing["minilm_s"] = round(time.perf_counter() - t2, 1)
    metrics = {
        "world": info["counts"],
        "stats": stats,
        "mechanisms": mech,
        "baselines": baselines,
        "timing": timing,
        "eval_queries": len(queries),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    _plots(out_dir, stats, baselines)
    md = out_dir / "report.md"
    text = _markdown(world, info, stats, baselines, timing, len(queries))
    text += (
        "\n## Mechanisms (`crops world mechanisms` compares worlds)\n\n" + "\n".join(mechanisms_markdown(mech)) + "\n"
    )
    md.write_text(text, encoding="utf-8")
    return md


def _f(x: Any, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and x != x) else f"{x:.{nd}f}"


def _markdown(
    world: Path,
    info: dict[str, Any],
    stats: dict[str, Any],
    baselines: dict[str, Any],
    timing: dict[str, Any],
    n_queries: int,
) -> str:
    c = info["counts"]
    lines = [
        f"# World report: `{world.name}`",
        "",
        f"seed {info['seed']}, catalog source: {info['catalog_source'] or 'embedded generator'}; "
        f"{c['videos']} videos, {c['users']} users, {c['requests']} search requests "
        f"({c['train_requests']} train / {c['test_requests']} test days), {c['search_log_rows']} search-log rows, "
        f"{c['rec_log_rows']} feed rows; built in {info['build_seconds']['total']} s "
        f"({info['build_seconds']}).",
        "",
        "## The bubble: share of truly relevant videos (grade ≥ 2) the legacy stack ever exposed",
        "",
        "| queries | n | mean relevant | exposed share (macro) | exposed share (by frequency) |",
        "|---|---|---|---|---|",
    ]
    for g in GROUPS:
        b = stats["bubble"][g]
        lines.append(
            f"| {g} | {b['queries']} | {_f(b['mean_relevant'], 1)} | {_f(b['exposed_share'])} | "
            f"{_f(b['exposed_share_freq_weighted'])} |"
        )
    lines += [
        "",
        "Ambiguous head terms: what users meant (demand) vs what the stack showed (exposure).",
        "",
        "| head | sense | demand | exposure | clicks |",
        "|---|---|---|---|---|",
    ]
    for s in stats["senses"]:
        lines.append(
            f"| {s['head']} | {s['sense']} | {_f(s['demand_share'], 2)} | {_f(s['exposure_share'], 2)} | "
            f"{_f(s['click_share'], 2)} |"
        )
    lines += ["", "## Behaviour", "", "| | all | head | torso | tail | ambiguous |", "|---|---|---|---|---|---|"]
    for name, d in (("CTR (exposed)", stats["ctr"]), ("reformulation rate", stats["reformulation_rate"])):
        lines.append(f"| {name} | " + " | ".join(_f(d.get(g)) for g in GROUPS) + " |")
    lines += ["", "| log stage | rows | mean query grade | share grade ≥ 2 |", "|---|---|---|---|"]
    for st, d in stats["stages"].items():
        lines.append(f"| {st} | {d['rows']} | {_f(d['mean_grade'], 2)} | {_f(d['relevant_share'])} |")
    fd, gap = stats["feed"], stats["reformulation_gap_s"]
    lines += [
        "",
        f"- satisfied requests: {_f(stats['satisfied_rate'])}; reformulation gaps {_f(gap['min'], 1)}–"
        f"{_f(gap['max'], 1)} s over {gap['pairs']} pairs "
        f"(window {info['config']['clicks']['reformulation_window_s']} s).",
        f"- feed within ±{fd['window_s']:.0f} s of a search: {fd['pairs_in_window']} (search, feed item) pairs; "
        f"{_f(fd['relevant_share'])} relevant to the query; of those, {_f(fd['relevant_never_exposed_share'])} "
        "were never exposed by the legacy stack for that query (what P2 can add).",
        "",
        f"## Baselines ({n_queries} eval queries, seeded sample per set; unjudged = 0)",
        "",
        "| model | set | metric | all | head | torso | tail | ambiguous |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, m in baselines.items():
        for sname, groups in m.items():
            metric = next(k for k in groups["all"] if k != "queries")
            lines.append(
                f"| {model} | {sname} | {metric} | "
                + " | ".join(f"{_f(groups[g][metric])} ({int(groups[g]['queries'])})" for g in GROUPS)
                + " |"
            )
    lines += [
        "",
        f"Report timing: {timing}.",
        "",
        "![bubble](bubble.png)",
        "",
        "![senses](senses.png)",
        "",
        "![baselines](baselines.png)",
        "",
    ]
    return "\n".join(lines)


def _plots(out_dir: Path, stats: dict[str, Any], baselines: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    vals = [stats["bubble"][g]["exposed_share"] or 0 for g in GROUPS]
    ax.bar(GROUPS, vals, color="tab:blue")
    ax.set_ylabel("relevant videos ever exposed (share)")
    ax.set_title("Legacy exposure of truly relevant videos")
    fig.tight_layout()
    fig.savefig(out_dir / "bubble.png", dpi=110)
    plt.close(fig)

    senses = stats["senses"]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(senses)), 4))
    labels = [f"{s['head']}:{s['sense']}" for s in senses]
    x = range(len(senses))
    ax.bar([i - 0.2 for i in x], [s["demand_share"] or 0 for s in senses], width=0.4, label="demand")
    ax.bar([i + 0.2 for i in x], [s["exposure_share"] or 0 for s in senses], width=0.4, label="exposure")
    ax.set_xticks(list(x), labels, rotation=75, fontsize=7)
    ax.set_ylabel("share within the head term")
    ax.legend()
    ax.set_title("Ambiguous head terms: demand vs legacy exposure per sense")
    fig.tight_layout()
    fig.savefig(out_dir / "senses.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), sharey=True)
    for ax, sname in zip(axes, ("ct", "qr", "graded"), strict=True):
        for k, (model, m) in enumerate(baselines.items()):
            metric = next(x for x in m[sname]["all"] if x != "queries")
            ax.bar(
                [i + 0.4 * k - 0.2 for i in range(len(GROUPS))],
                [m[sname][g][metric] if m[sname][g]["queries"] else 0 for g in GROUPS],
                width=0.4,
                label=model,
            )
            ax.set_title(f"{sname}: {metric}")
        ax.set_xticks(range(len(GROUPS)), GROUPS, fontsize=8)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "baselines.png", dpi=110)
    plt.close(fig)
