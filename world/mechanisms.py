"""World statistics about its mechanisms, from a built world's logs and truth (DuckDB over Parquet).

What they answer (each is a property of the world, measured before any model is trained on it):

- ``reformulation_causes``: why users reformulated: the retriever brought no video relevant to the
  user's need (*retrieval miss*), it did but the ranking stage did not expose one (*ranking miss*),
  or one was exposed and the user did not click it (*not clicked*: examination and click noise).
- ``exposure_held_relevant``: share of requests whose exposed videos held one relevant to the user.
- ``bubble_by_class`` / ``bubble_by_sense``: share of the relevant videos (grade ≥ 2) ever exposed
  for a query, by query class, and for each sense of an ambiguous head term (with its share of the
  demand, of the exposures and of the clicks).
- ``qr_by_sense``: for ambiguous head queries in the QR set, the share of their positives per sense.
- ``feed_lean_grades``: feed items that leaned toward a search session, graded for the session's
  first query (torso and tail queries): grade 1 = same topic, wrong facet.
- ``fresh_and_lexical``: how often relevant videos are exposed when they are fresh uploads (during
  the logged days) or lexically unreachable (no word of the topic's names in what the legacy
  indexes, speech transcript included), against the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write_text
from world.build import read_world_info
from world.ontology import load_ontology

TOP = 3  # "shown low": the first video relevant to the user was below the top TOP positions



def world_db(world: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view over each of the world's log, truth and eval tables."""
    w = str(world)
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute(f"""
        CREATE VIEW slog AS SELECT * FROM read_parquet(['{w}/train/search_log.parquet', '{w}/test/search_log.parquet']);
        CREATE VIEW rlog AS SELECT * FROM read_parquet(['{w}/train/rec_log.parquet', '{w}/test/rec_log.parquet']);
        CREATE VIEW rel AS SELECT * FROM read_parquet('{w}/truth/relevance.parquet');
        CREATE VIEW qs AS SELECT * FROM read_parquet('{w}/truth/queries.parquet');
        CREATE VIEW req AS SELECT * FROM read_parquet('{w}/truth/requests.parquet');
        CREATE VIEW vi AS SELECT * FROM read_parquet('{w}/truth/video_intents.parquet');
        CREATE VIEW vids AS SELECT * FROM read_parquet('{w}/videos.parquet');
        CREATE VIEW topics AS SELECT * FROM read_parquet('{w}/truth/topics.parquet');
        CREATE VIEW lean AS SELECT * FROM read_parquet('{w}/truth/rec_lean.parquet');
        CREATE VIEW qr AS SELECT * FROM read_parquet('{w}/eval/qr.parquet');
    """)
    return con

def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def mechanism_stats(world: Path) -> dict[str, Any]:
    """The statistics listed in the module docstring, as plain JSON-able dicts."""
    world = Path(world)
    info = read_world_info(world)
    con = world_db(world)
    has_pos = "first_user_relevant_position" in pq.read_schema(world / "truth" / "requests.parquet").names
    first_pos = "req.first_user_relevant_position" if has_pos else "NULL"  # worlds built before the column
    con.execute(f"""
        CREATE TABLE ex AS SELECT DISTINCT query, video_id FROM slog WHERE stage = 'exposed';
        CREATE TABLE r AS
        SELECT req.*, q.query_class, q.ambiguous, q.surface,
               EXISTS (SELECT 1 FROM req c WHERE c.parent_request_id = req.request_id) AS reformulated,
               CASE WHEN req.retrieved_user_relevant = 0 THEN 'retrieval_miss'
                    WHEN req.exposed_user_relevant = 0 THEN 'ranking_miss'
                    ELSE 'not_clicked' END AS cause,
               {first_pos} AS first_rel_pos
        FROM req JOIN qs q USING (query);
    """)
    out: dict[str, Any] = {"world": world.name, "seed": info["seed"]}
    groups = (
        "'all' AS g FROM r",
        "query_class || CASE WHEN ambiguous THEN '/ambiguous' ELSE '' END AS g FROM r",
    )
    causes: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for src in groups:
        causes += _rows(
            con,
            f"""SELECT g, count(*) AS reformulations,
                   avg(CAST(cause = 'retrieval_miss' AS DOUBLE)) AS retrieval_miss,
                   avg(CAST(cause = 'ranking_miss' AS DOUBLE)) AS ranking_miss,
                   avg(CAST(cause = 'not_clicked' AS DOUBLE)) AS not_clicked,
                   avg(CASE WHEN first_rel_pos IS NOT NULL
                            THEN CAST(cause = 'not_clicked' AND first_rel_pos >= {TOP} AS DOUBLE) END)
                       AS not_clicked_shown_low
               FROM (SELECT cause, first_rel_pos, {src} WHERE reformulated) GROUP BY g ORDER BY g""",
        )
        held += _rows(
            con,
            f"""SELECT g, count(*) AS requests,
                   avg(CAST(retrieved_user_relevant > 0 AS DOUBLE)) AS retrieved_held_relevant,
                   avg(CAST(exposed_user_relevant > 0 AS DOUBLE)) AS exposure_held_relevant,
                   avg(CAST(satisfied AS DOUBLE)) AS satisfied,
                   avg(CAST(reformulated AS DOUBLE)) AS reformulation_rate
               FROM (SELECT retrieved_user_relevant, exposed_user_relevant, satisfied, reformulated, {src})
               GROUP BY g ORDER BY g""",
        )
    out["reformulation_causes"] = causes
    out["exposure_held_relevant"] = held
    # bubble: per query (asked at least once), share of its grade >= 2 videos ever exposed for it
    con.execute("""
        CREATE TABLE bub AS
        SELECT rel.query, rel.video_id, q.query_class, q.ambiguous, q.surface, q.n_train + q.n_test AS freq,
               ex.video_id IS NOT NULL AS exposed
        FROM rel JOIN qs q USING (query) LEFT JOIN ex USING (query, video_id)
        WHERE rel.grade >= 2 AND q.n_train + q.n_test > 0
    """)
    out["bubble_by_class"] = _rows(
        con,
        """WITH per_q AS (SELECT query, query_class, ambiguous, any_value(freq) AS freq,
                                 avg(CAST(exposed AS DOUBLE)) AS share FROM bub GROUP BY ALL)
           SELECT query_class || CASE WHEN ambiguous THEN '/ambiguous' ELSE '' END AS g, count(*) AS queries,
                  avg(share) AS exposed_share, sum(share * freq) / sum(freq) AS exposed_share_freq_weighted
           FROM per_q GROUP BY g ORDER BY g""",
    )
    # per sense of each ambiguous head term: demand, exposures, clicks, and its relevant videos exposed
    out["bubble_by_sense"] = _rows(
        con,
        """WITH hq AS (SELECT query, surface FROM qs WHERE query_class = 'head' AND ambiguous),
           demand AS (SELECT hq.surface, req.need_topic AS topic, count(*) AS n FROM req JOIN hq USING (query)
                      GROUP BY ALL),
           expo AS (SELECT hq.surface, vi.primary_topic AS topic, count(*) AS n,
                           sum(CAST(s.clicked AS INT)) AS clicks
                    FROM slog s JOIN hq USING (query) JOIN vi USING (video_id) WHERE s.stage = 'exposed'
                    GROUP BY ALL),
           relv AS (SELECT b.surface, vi.primary_topic AS topic, count(DISTINCT b.video_id) AS n_rel,
                           count(DISTINCT CASE WHEN b.exposed THEN b.video_id END) AS n_rel_exposed
                    FROM bub b JOIN hq USING (query) JOIN vi USING (video_id) GROUP BY ALL)
           SELECT d.surface AS head, t.key AS sense,
                  d.n / sum(d.n) OVER (PARTITION BY d.surface) AS demand_share,
                  coalesce(e.n, 0) / sum(coalesce(e.n, 0)) OVER (PARTITION BY d.surface) AS exposure_share,
                  coalesce(e.clicks, 0) / nullif(sum(coalesce(e.clicks, 0)) OVER (PARTITION BY d.surface), 0)
                      AS click_share,
                  coalesce(v.n_rel_exposed, 0) / nullif(v.n_rel, 0) AS relevant_exposed_share
           FROM demand d JOIN topics t ON t.topic_id = d.topic
           LEFT JOIN expo e ON e.surface = d.surface AND e.topic = d.topic
           LEFT JOIN relv v ON v.surface = d.surface AND v.topic = d.topic
           ORDER BY head, demand_share DESC""",
    )
    out["qr_by_sense"] = _rows(
        con,
        """WITH hq AS (SELECT query, surface FROM qs WHERE query_class = 'head' AND ambiguous),
           p AS (SELECT hq.surface, vi.primary_topic AS topic, count(*) AS n
                 FROM qr JOIN hq USING (query) JOIN vi USING (video_id) GROUP BY ALL)
           SELECT p.surface AS head, coalesce(t.key, '(none)') AS sense, p.n AS positives,
                  p.n / sum(p.n) OVER (PARTITION BY p.surface) AS share
           FROM p LEFT JOIN topics t ON t.topic_id = p.topic ORDER BY head, share DESC""",
    )
    # the feed items that leaned toward a session, graded for that session's first query
    out["feed_lean_grades"] = _rows(
        con,
        """WITH first AS (SELECT session_id, query, query_class FROM r WHERE NOT is_reformulation),
           j AS (SELECT f.query_class, coalesce(rel.grade, 0) AS grade
                 FROM lean l JOIN rlog x ON x.user_id = l.user_id AND x.ts = l.ts AND x.video_id = l.video_id
                 JOIN first f ON f.session_id = l.lean_session
                 LEFT JOIN rel ON rel.query = f.query AND rel.video_id = l.video_id
                 WHERE l.lean_session >= 0 AND x.action <> 'skip')
           SELECT query_class AS g, count(*) AS items,
                  avg(CAST(grade = 0 AS DOUBLE)) AS grade0, avg(CAST(grade = 1 AS DOUBLE)) AS grade1,
                  avg(CAST(grade = 2 AS DOUBLE)) AS grade2, avg(CAST(grade = 3 AS DOUBLE)) AS grade3
           FROM j GROUP BY g ORDER BY g""",
    )
    out["fresh_and_lexical"] = _fresh_and_lexical(con, world, info)
    con.close()
    return out


def _fresh_and_lexical(con: duckdb.DuckDBPyConnection, world: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    onto_file = info.get("ontology_file")
    onto = load_ontology(str(world / onto_file) if onto_file else None)
    names = {t.topic_id: sorted({w for n in (t.head, *t.names) for w in n.lower().split()}) for t in onto.topics}
    vt = con.execute(
        """SELECT v.video_id, vi.primary_topic, v.upload_ts,
                  lower(v.title || ' ' || v.caption || ' ' || array_to_string(v.tags, ' ') || ' '
                        || coalesce(vi.asr_text, '')) AS text
           FROM vids v JOIN vi USING (video_id)"""
    ).fetchall()
    flags = []
    for vid, topic, up, text in vt:
        words = set(text.replace(",", " ").split())
        reach = topic is not None and topic >= 0 and any(w in words for w in names.get(int(topic), ()))
        flags.append((vid, bool(up >= info["start_ts"]), bool(reach)))
    con.register(
        "vflags",
        pa.table(
            {
                "video_id": [f[0] for f in flags],
                "fresh": [f[1] for f in flags],
                "lexical": [f[2] for f in flags],
            }
        ),
    )
    return _rows(
        con,
        """SELECT CASE WHEN f.fresh THEN 'fresh' ELSE 'older' END AS upload,
                  CASE WHEN f.lexical THEN 'names the topic' ELSE 'synonyms only' END AS text,
                  count(*) AS relevant_pairs, avg(CAST(b.exposed AS DOUBLE)) AS exposed_share
           FROM bub b JOIN vflags f USING (video_id) WHERE b.query_class = 'head' AND NOT b.ambiguous
           GROUP BY ALL ORDER BY upload, text""",
    )


def _f(x: Any, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and x != x) else f"{x:.{nd}f}"


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_f(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return out


def mechanisms_markdown(stats: dict[str, Any], *, heads: tuple[str, ...] = ()) -> list[str]:
    """Markdown sections for one world's ``mechanism_stats`` (``heads``: only these ambiguous heads)."""

    def pick(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if not heads or r["head"] in heads]

    lines = ["#### Why users reformulated (share of reformulated requests)", ""]
    lines += _table(
        stats["reformulation_causes"],
        ["g", "reformulations", "retrieval_miss", "ranking_miss", "not_clicked", "not_clicked_shown_low"],
    )
    lines += ["", "#### What the funnel held for the user's need", ""]
    lines += _table(
        stats["exposure_held_relevant"],
        ["g", "requests", "retrieved_held_relevant", "exposure_held_relevant", "satisfied", "reformulation_rate"],
    )
    lines += ["", "#### Bubble by class: relevant videos (grade ≥ 2) ever exposed for the query", ""]
    lines += _table(stats["bubble_by_class"], ["g", "queries", "exposed_share", "exposed_share_freq_weighted"])
    lines += ["", "#### Bubble by sense of ambiguous head terms", ""]
    lines += _table(
        pick(stats["bubble_by_sense"]),
        ["head", "sense", "demand_share", "exposure_share", "click_share", "relevant_exposed_share"],
    )
    lines += ["", "#### QR positives of ambiguous head queries, by sense", ""]
    lines += _table(pick(stats["qr_by_sense"]), ["head", "sense", "positives", "share"])
    lines += ["", "#### Feed items leaning toward a session, graded for its first query", ""]
    lines += _table(stats["feed_lean_grades"], ["g", "items", "grade0", "grade1", "grade2", "grade3"])
    lines += ["", "#### Exposure of relevant videos (non-ambiguous head queries) by upload time and text", ""]
    lines += _table(stats["fresh_and_lexical"], ["upload", "text", "relevant_pairs", "exposed_share"])
    return lines


def _headline(stats: dict[str, Any], heads: tuple[str, ...]) -> dict[str, Any]:
    causes = {r["g"]: r for r in stats["reformulation_causes"]}
    held = {r["g"]: r for r in stats["exposure_held_relevant"]}
    bub = {r["g"]: r for r in stats["bubble_by_class"]}
    lean = [r for r in stats["feed_lean_grades"] if r["g"] in ("torso", "tail")]
    n_lean = sum(r["items"] for r in lean)
    out: dict[str, Any] = {
        "reformulations from a retrieval miss": causes.get("all", {}).get("retrieval_miss"),
        "reformulations from a ranking miss": causes.get("all", {}).get("ranking_miss"),
        "reformulations after an exposure that held a relevant video": causes.get("all", {}).get("not_clicked"),
        f"… of which the first relevant video was below position {TOP}": causes.get("all", {}).get(
            "not_clicked_shown_low"
        ),
        "non-ambiguous head requests whose exposure held a user-relevant video": held.get("head", {}).get(
            "exposure_held_relevant"
        ),
        "ambiguous head requests whose exposure held a user-relevant video": held.get("head/ambiguous", {}).get(
            "exposure_held_relevant"
        ),
        "satisfied requests": held.get("all", {}).get("satisfied"),
        "reformulation rate": held.get("all", {}).get("reformulation_rate"),
        "bubble: head queries, relevant videos ever exposed": bub.get("head", {}).get("exposed_share"),
        "bubble: ambiguous head queries, relevant videos ever exposed": bub.get("head/ambiguous", {}).get(
            "exposed_share"
        ),
        "feed items leaning to a torso/tail session that are grade 1 for its query": (
            sum(r["grade1"] * r["items"] for r in lean) / n_lean if n_lean else None
        ),
    }
    for r in stats["bubble_by_sense"]:
        if r["head"] in heads:
            out[f"'{r['head']}' → {r['sense']}: demand / exposure"] = (r["demand_share"], r["exposure_share"])
    return out


def write_mechanisms_report(worlds: list[Path], out_dir: Path, *, heads: tuple[str, ...] = ()) -> Path:
    """``mechanisms.md`` + ``mechanisms.json`` for one or more worlds (a headline table side by side,
    then each world's sections); returns the markdown path."""
    from core.atomic import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    all_stats = {str(w): mechanism_stats(w) for w in worlds}
    heads = heads or ("python", "transformer")
    atomic_write_json(out_dir / "mechanisms.json", all_stats)
    names = [Path(w).name for w in all_stats]
    lines = ["# World mechanisms", "", "| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    heads_all = [_headline(s, heads) for s in all_stats.values()]
    keys = list(dict.fromkeys(k for h in heads_all for k in h))
    for k in keys:
        cells = []
        for h in heads_all:
            v = h.get(k)
            cells.append(f"{_f(v[0], 2)} / {_f(v[1], 2)}" if isinstance(v, tuple) else _f(v))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    for w, s in all_stats.items():
        info = read_world_info(Path(w))
        knobs = info["config"]
        lines += [
            "",
            f"## `{Path(w).name}`",
            "",
            f"seed {info['seed']}, ontology {info.get('ontology_source', 'embedded')}, "
            f"{info['counts']['requests']} requests; ranker relevance view "
            f"`{knobs['legacy'].get('relevance_view', 'user')}`, feedback weights (popularity / category / "
            f"click history) {knobs['legacy']['popularity_weight']} / {knobs['legacy']['query_category_weight']} / "
            f"{knobs['legacy']['feedback_weight']}, feed lean topic share {knobs['rec'].get('lean_topic_share', 0.3)}.",
            "",
        ]
        lines += mechanisms_markdown(s, heads=heads)
    md = out_dir / "mechanisms.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    return md
