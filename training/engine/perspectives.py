"""The perspectives as SQL text, ONE implementation run unchanged by DuckDB and by Spark SQL.

Only the portable subset is used (CTEs, joins, GROUP BY, CASE, ROW_NUMBER, COALESCE, CAST to
STRING/TINYINT/DOUBLE/BOOLEAN), so both engines compute the same rows from the same Parquet input.
Tables referenced by name are registered by the engine: ``search_log``, ``rec_log`` (contracts in ``core.logs``)
and the intermediate results ``log_samples``, ``p1_candidates``, ``p2_candidates``, ``theta``,
``p3``. Parameters are numbers validated by :class:`MineConfig`, never user strings.
"""

from __future__ import annotations

from core.samples import LEVELS, SOURCE_PRIORITY
from training.engine.config import MineConfig

_REQUESTS = """requests AS (
  SELECT request_id, MIN(user_id) AS user_id, MIN(ts) AS ts, MIN(query) AS query
  FROM search_log GROUP BY request_id
)"""


def log_samples_sql() -> str:
    """P0 clicks and the log-stage samples: one row per (query, video) with its best stage."""
    return f"""
SELECT query, video_id,
  CAST(MAX(CASE WHEN clicked THEN {LEVELS["p0_click"]}
                WHEN stage = 'exposed' THEN {LEVELS["exposed_unclicked"]}
                WHEN stage = 'rank_unexposed' THEN {LEVELS["rank_unexposed"]}
                WHEN stage = 'prerank_filtered' THEN {LEVELS["prerank_filtered"]}
                ELSE 0 END) AS INT) AS level,
  MAX(CASE WHEN stage = 'exposed' THEN 1 ELSE 0 END) = 1 AS exposed_ever
FROM search_log
GROUP BY query, video_id
"""


def p1_candidates_sql(cfg: MineConfig) -> str:
    """P1 (query level): videos clicked under a follow-up query of the same user issued within the
    window after the original (0 < Δt ≤ window) become candidates of the ORIGINAL query."""
    window_ms = round(cfg.reformulation_window_s * 1000)
    return f"""
WITH {_REQUESTS},
clicks AS (SELECT DISTINCT request_id, video_id FROM search_log WHERE clicked)
SELECT a.query AS query, c.video_id AS video_id,
       COUNT(DISTINCT a.user_id) AS n_users, MIN(b.ts - a.ts) AS min_dt_ms
FROM requests a
JOIN requests b
  ON a.user_id = b.user_id AND b.ts > a.ts AND b.ts - a.ts <= {window_ms} AND b.query <> a.query
JOIN clicks c ON c.request_id = b.request_id
GROUP BY a.query, c.video_id
"""


def p2_candidates_sql(cfg: MineConfig) -> str:
    """P2 (system level): rec-feed interactions of the query's users within ± window of the query
    time, at most ``rec_cap_per_user`` distinct videos per (query, user), nearest in time first."""
    window_ms = round(cfg.rec_window_s * 1000)
    conds = []
    if cfg.rec_actions:
        conds.append("r.action IN ({})".format(", ".join(f"'{a}'" for a in cfg.rec_actions)))
    if cfg.rec_exclude_actions:
        excl = ", ".join(f"'{a}'" for a in cfg.rec_exclude_actions)
        conds.append(f"COALESCE(r.action, '') NOT IN ({excl})")
    action_filter = ("WHERE " + " AND ".join(conds)) if conds else ""
    return f"""
WITH {_REQUESTS},
issued AS (SELECT DISTINCT user_id, query, ts FROM requests),
hits AS (
  SELECT i.query AS query, i.user_id AS user_id, r.video_id AS video_id,
         ABS(r.ts - i.ts) AS dt, r.ts AS rts
  FROM issued i
  JOIN rec_log r ON r.user_id = i.user_id AND r.ts >= i.ts - {window_ms} AND r.ts <= i.ts + {window_ms}
  {action_filter}
),
nearest AS (
  SELECT query, user_id, video_id, MIN(dt) AS dt, MIN(rts) AS rts
  FROM hits GROUP BY query, user_id, video_id
),
ranked AS (
  SELECT query, user_id, video_id,
         ROW_NUMBER() OVER (PARTITION BY query, user_id ORDER BY dt, rts, video_id) AS rn
  FROM nearest
)
SELECT query, video_id, COUNT(DISTINCT user_id) AS n_users
FROM ranked WHERE rn <= {cfg.rec_cap_per_user}
GROUP BY query, video_id
"""


def _source_case() -> str:
    by_level = {
        LEVELS["p0_click"]: "p0_click",
        LEVELS["exposed_unclicked"]: "exposed_unclicked",
        LEVELS["rank_unexposed"]: "rank_unexposed",
        LEVELS["prerank_filtered"]: "prerank_filtered",
    }
    whens = " ".join(f"WHEN {lvl} THEN '{src}'" for lvl, src in by_level.items())
    return f"CASE level {whens} END"


def _priority_case() -> str:
    whens = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(SOURCE_PRIORITY))
    return f"CASE source {whens} END"


def assemble_sql(cfg: MineConfig) -> str:
    """Union of every perspective, one row per (query, video) — or (query, text) for P3 — keeping
    its highest level (ties: :data:`SOURCE_PRIORITY`). θ and ``exposed_ever`` are attached."""
    alpha = repr(float(cfg.alpha))
    return f"""
WITH cand AS (
  SELECT query, video_id, CAST(NULL AS STRING) AS text, level, {_source_case()} AS source
  FROM log_samples WHERE level > 0
  UNION ALL
  SELECT p.query, p.video_id, CAST(NULL AS STRING), {LEVELS["p1_reformulation"]}, 'p1_reformulation'
  FROM p1_candidates p JOIN theta t ON t.query = p.query AND t.video_id = p.video_id
  WHERE t.theta > {alpha}
  UNION ALL
  SELECT p.query, p.video_id, CAST(NULL AS STRING), {LEVELS["p2_rec"]}, 'p2_rec'
  FROM p2_candidates p JOIN theta t ON t.query = p.query AND t.video_id = p.video_id
  WHERE t.theta > {alpha}
  UNION ALL
  SELECT query, CAST(NULL AS STRING), text, {LEVELS["p3_llm"]}, 'p3_llm'
  FROM p3 WHERE keep
),
ranked AS (
  SELECT query, video_id, text, level, source,
         ROW_NUMBER() OVER (PARTITION BY query, COALESCE(video_id, ''), COALESCE(text, '')
                            ORDER BY level DESC, {_priority_case()}) AS rn
  FROM cand
),
p3_theta AS (SELECT query, text, MAX(theta) AS theta FROM p3 WHERE keep GROUP BY query, text)
SELECT r.query AS query, r.video_id AS video_id, r.text AS text,
       CAST(r.level AS TINYINT) AS level, r.source AS source,
       CAST(COALESCE(t.theta, pt.theta) AS DOUBLE) AS theta,
       CASE WHEN r.video_id IS NULL THEN CAST(NULL AS BOOLEAN)
            ELSE COALESCE(l.exposed_ever, FALSE) END AS exposed_ever
FROM ranked r
LEFT JOIN theta t ON r.video_id IS NOT NULL AND t.query = r.query AND t.video_id = r.video_id
LEFT JOIN p3_theta pt ON r.video_id IS NULL AND pt.query = r.query AND pt.text = r.text
LEFT JOIN log_samples l ON l.query = r.query AND l.video_id = r.video_id
WHERE r.rn = 1
"""
