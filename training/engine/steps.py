"""The data engine's steps, each a function of the shared :class:`MineContext` (see ``pipeline``)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.atomic import atomic_write_json
from core.errors import CropsError, ErrorKind
from core.samples import POSITIVE_LEVEL, SAMPLES_FILE, SAMPLES_SCHEMA
from training.engine.context import MineContext
from training.engine.discriminator import Discriminator
from training.engine.perspectives import (
    assemble_sql,
    log_samples_sql,
    p1_candidates_sql,
    p2_candidates_sql,
)
from training.engine.tables import P3_SCHEMA, read_table, write_table

log = logging.getLogger(__name__)

EXAMPLES_SQL = """
WITH c AS (SELECT query, video_id, COUNT(*) AS n FROM search_log WHERE clicked GROUP BY query, video_id),
r AS (SELECT query, video_id, n, ROW_NUMBER() OVER (PARTITION BY query ORDER BY n DESC, video_id) AS rn FROM c),
d AS (SELECT query, COUNT(DISTINCT request_id) AS demand FROM search_log GROUP BY query)
SELECT r.query AS query, r.video_id AS video_id, r.n AS n, d.demand AS demand
FROM r JOIN d ON d.query = r.query WHERE r.rn = 1
"""


def run_sql(ctx: MineContext) -> None:
    ctx.register("search_log", "rec_log")
    for name, sql in (
        ("log_samples", log_samples_sql()),
        ("p1_candidates", p1_candidates_sql(ctx.cfg)),
        ("p2_candidates", p2_candidates_sql(ctx.cfg)),
        ("examples", EXAMPLES_SQL),
    ):
        n = ctx.engine.write(sql, ctx.work / f"{name}.parquet")
        log.info("  %s: %d rows (%s)", name, n, ctx.engine.name)


def fit_pairs(ctx: MineContext) -> tuple[list[str], list[str], list[int], np.ndarray, str]:
    """Labelled pairs of the fit half of the queries (the other half is held out for the α sweep):
    a few P1/P2 candidates, log samples, truth positives and random videos per query, labelled
    from the labels file (or weak click labels without one), then a uniform sample of at most
    ``max_fit_pairs``. Returns (queries, video_ids, labels, is_candidate, origin)."""
    con = ctx.duck()
    rng = np.random.default_rng(ctx.seed)
    fitq = [q for q, e in con.execute("SELECT query, is_eval FROM qflags ORDER BY query").fetchall() if not e]
    vid_list = sorted(ctx.videos)
    rnd = rng.integers(0, len(vid_list), size=(len(fitq), 2))
    con.register(
        "rand_pairs",
        pa.table(
            {
                "query": np.repeat(np.array(fitq, dtype=object), 2).tolist(),
                "video_id": [vid_list[int(i)] for i in rnd.ravel()],
            }
        ),
    )
    if ctx.inp.labels is None:
        # Weak labels: clicked = relevant, filtered before ranking = irrelevant.
        con.execute(
            "CREATE VIEW truth AS SELECT query, video_id, CAST(level = 4 AS INT) AS y "
            "FROM log_samples WHERE level IN (1, 4)"
        )
        origin = "weak labels (clicked vs filtered before ranking)"
        pool = "SELECT query, video_id, 1 AS is_cand, 1 AS kind FROM truth"
    else:
        origin = f"labels from {ctx.inp.labels.name}"
        pool = """
  SELECT query, video_id, 1 AS is_cand, 0 AS kind FROM p1_candidates
  UNION ALL SELECT query, video_id, 1, 0 FROM p2_candidates
  UNION ALL SELECT query, video_id, 0, 1 FROM log_samples
  UNION ALL SELECT query, video_id, 0, 2 FROM truth WHERE y = 1
  UNION ALL SELECT query, video_id, 0, 3 FROM rand_pairs"""
    seed = int(ctx.seed)
    rows = con.execute(f"""
WITH pool AS ({pool}),
fit AS (
  SELECT p.* FROM pool p JOIN qflags f ON f.query = p.query AND NOT f.is_eval
  JOIN vids v ON v.video_id = p.video_id
),
ranked AS (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY query, kind ORDER BY hash(video_id, {seed})) AS rn FROM fit
),
picked AS (
  SELECT query, video_id, MAX(is_cand) AS is_cand FROM ranked
  WHERE rn <= CASE kind WHEN 0 THEN 6 WHEN 1 THEN 3 ELSE 2 END
  GROUP BY query, video_id
)
SELECT p.query, p.video_id, COALESCE(t.y, 0) AS y, p.is_cand FROM picked p
LEFT JOIN truth t ON t.query = p.query AND t.video_id = p.video_id
ORDER BY hash(p.query, p.video_id, {seed}), p.query, p.video_id
LIMIT {int(ctx.max_fit_pairs)}
""").fetchall()
    con.close()
    rows.sort()
    return (
        [r[0] for r in rows],
        [r[1] for r in rows],
        [int(r[2]) for r in rows],
        np.array([bool(r[3]) for r in rows]),
        origin,
    )


def fit_theta(ctx: MineContext) -> None:
    if ctx.fake_scorer is not None:
        atomic_write_json(ctx.work / "theta_fit.json", {"fake_scorer": True})
        return
    qs, vs, ys, is_cand, origin = fit_pairs(ctx)
    if len(set(ys)) < 2:
        raise CropsError(ErrorKind.INVALID_INPUT, f"θ needs relevant and irrelevant labelled pairs ({origin})")
    t0 = time.perf_counter()
    disc = ctx.discriminator
    rep = disc.fit(qs, [ctx.videos[v] for v in vs], ys, seed=ctx.seed, progress=ctx.progress, calib_mask=is_cand)
    disc.cache.save()
    disc.save(ctx.work / "theta_model")
    d = Discriminator.report_dict(rep)
    d["theta_kind"] = "cross-encoder" if ctx.theta_backend == "cross" else "bi-encoder"
    if hasattr(disc, "fit_losses"):
        d["fit_loss_first_last"] = list(disc.fit_losses)
    d.update({"label_origin": origin, "n_pairs": len(ys), "fit_total_seconds": time.perf_counter() - t0})
    atomic_write_json(ctx.work / "theta_fit.json", d)
    log.info(
        "  θ: AUC %.3f, ECE %.4f (raw %.4f) on %d held-out pairs",
        rep.auc_test,
        rep.ece_test,
        rep.ece_test_raw,
        rep.n_test,
    )


def score_candidates(ctx: MineContext) -> None:
    ctx.ensure_theta_loaded()
    qs, vs = ctx.candidate_pairs()
    keep = [i for i, v in enumerate(vs) if v in ctx.videos]
    if len(keep) < len(vs):
        log.warning("  %d candidate videos are not in the videos table; they get no θ", len(vs) - len(keep))
    qs, vs = [qs[i] for i in keep], [vs[i] for i in keep]
    if qs and ctx.fake_scorer is None and ctx.inp.labels is not None:
        theta = recalibrated_theta(ctx, qs, vs)
    else:
        theta = ctx.score(qs, [ctx.videos[v] for v in vs]) if qs else np.zeros(0)
    ctx.save_embeddings()
    write_table(
        pa.table(
            {
                "query": pa.array(qs, pa.string()),
                "video_id": pa.array(vs, pa.string()),
                "theta": pa.array(theta, pa.float64()),
            }
        ),
        ctx.work / "theta.parquet",
    )


def recalibrated_theta(ctx: MineContext, qs: list[str], vs: list[str]) -> np.ndarray:
    """θ for every candidate, with Platt refitted on ALL labelled candidates of the fit-half
    queries: the fit step calibrated on a small sample, this calibrates on exactly the
    distribution θ is thresholded on. Held-out queries stay unseen (the α sweep uses them)."""
    from training.engine.discriminator import expected_calibration_error, fit_platt, sigmoid

    disc = ctx.discriminator
    margin = disc.pair_margins(qs, [ctx.videos[v] for v in vs], progress=ctx.progress)
    con = ctx.duck()
    con.register("pairs", pa.table({"i": np.arange(len(qs)), "query": qs, "video_id": vs}))
    rows = con.execute(
        "SELECT p.i, COALESCE(t.y, 0), COALESCE(f.is_eval, FALSE) FROM pairs p "
        "LEFT JOIN truth t ON t.query = p.query AND t.video_id = p.video_id "
        "LEFT JOIN qflags f ON f.query = p.query ORDER BY p.i"
    ).fetchall()
    con.close()
    y = np.array([r[1] for r in rows], dtype=np.int64)
    fit = ~np.array([bool(r[2]) for r in rows])
    old = disc.platt
    if fit.sum() >= 2 and 0 < y[fit].sum() < fit.sum():
        disc.platt = fit_platt(margin[fit], y[fit])
        disc.save(ctx.work / "theta_model")
        info = json.loads((ctx.work / "theta_fit.json").read_text())
        info["recalibration"] = {
            "pairs": int(fit.sum()),
            "platt_before": list(old),
            "platt_after": list(disc.platt),
            "ece_fit_candidates_before": expected_calibration_error(sigmoid(old[0] * margin[fit] + old[1]), y[fit]),
            "ece_fit_candidates_after": expected_calibration_error(
                sigmoid(disc.platt[0] * margin[fit] + disc.platt[1]), y[fit]
            ),
        }
        atomic_write_json(ctx.work / "theta_fit.json", info)
    return sigmoid(disc.platt[0] * margin + disc.platt[1])


def p3_requests(ctx: MineContext) -> tuple[list[tuple[str, str, str]], list[int]]:
    """The queries the LLM is asked about, each with its most-clicked video as the example, and
    how many descriptions each gets (see ``MineConfig.p3_sampling``)."""
    from training.engine.p3 import allocate_by_demand

    ex = read_table(ctx.work / "examples.parquet").to_pydict()
    demand = ex.get("demand") or ex["n"]
    rows = sorted(
        (q, v, ctx.videos[v], float(d))
        for q, v, d in zip(ex["query"], ex["video_id"], demand, strict=True)
        if v in ctx.videos
    )
    if ctx.cfg.p3_max_queries:  # a hash sample, not the alphabetical head
        rows = sorted(rows, key=lambda e: hashlib.sha1(e[0].encode("utf-8")).digest())
        rows = sorted(rows[: ctx.cfg.p3_max_queries])
    if ctx.cfg.p3_sampling == "all":
        counts = [ctx.cfg.p3_n] * len(rows)
    else:
        levels = read_table(ctx.work / "log_samples.parquet", ["level"]).column("level")
        clicks = int(pc.sum(pc.equal(levels, POSITIVE_LEVEL)).as_py() or 0)
        total = round(ctx.cfg.p3_volume * clicks)
        counts = allocate_by_demand([r[3] for r in rows], total, ctx.cfg.p3_max_per_query, ctx.seed).tolist()
    keep = [i for i, c in enumerate(counts) if c > 0]
    return [rows[i][:3] for i in keep], [int(counts[i]) for i in keep]


def run_p3(ctx: MineContext) -> None:
    from training.engine.p3 import generate_p3

    rows: list[Any] = []
    results: list[Any] = []
    if ctx.source is not None and ctx.cfg.p3_n > 0:
        ctx.ensure_theta_loaded()
        examples, counts = p3_requests(ctx)
        rows, results = generate_p3(
            ctx.source,
            examples,
            ctx.score,
            n=counts,
            alpha=ctx.cfg.alpha,
            min_chars=ctx.cfg.p3_min_chars,
            max_chars=ctx.cfg.p3_max_chars,
            progress=ctx.progress,
        )
        ctx.save_embeddings()
    model = ctx.source.model if ctx.source else ""
    pv = ctx.source.prompt_version if ctx.source else ""
    table = pa.Table.from_pylist(
        [
            {
                "query": r.query,
                "text": r.text,
                "example_video_id": r.example_video_id,
                "model": model,
                "prompt_version": pv,
                "theta": r.theta,
                "keep": r.keep,
                "reason": r.reason,
                "truth_ok": r.truth_ok,
                "about_topic": r.about[0] if r.about else None,
                "about_intent": r.about[1] if r.about else None,
                "about_modifier": r.about[2] if r.about else None,
            }
            for r in rows
        ],
        schema=P3_SCHEMA,
    )
    write_table(table, ctx.work / "p3.parquet")
    kept = table.filter(table.column("keep"))
    write_table(
        kept.select(["query", "text", "example_video_id", "model", "prompt_version"]),
        ctx.out / "llm_positives.parquet",
    )
    from training.engine.llm_client import iter_errors

    atomic_write_json(
        ctx.work / "p3_stats.json",
        {
            "queries": len(results),
            "cached": sum(r.cached for r in results),
            "errors": iter_errors(results),
            "descriptions": len(rows),
            "reasons": {k: sum(r.reason == k for r in rows) for k in sorted({r.reason for r in rows})},
        },
    )


def assemble(ctx: MineContext) -> None:
    ctx.register("log_samples", "p1_candidates", "p2_candidates", "theta", "p3")
    raw = ctx.work / "samples_raw.parquet"
    ctx.engine.write(assemble_sql(ctx.cfg), raw)
    t = read_table(raw).select(SAMPLES_SCHEMA.names).cast(SAMPLES_SCHEMA)
    t = t.sort_by(
        [
            ("query", "ascending"),
            ("level", "descending"),
            ("source", "ascending"),
            ("video_id", "ascending"),
            ("text", "ascending"),
        ]
    )
    write_table(t, ctx.out / SAMPLES_FILE)
