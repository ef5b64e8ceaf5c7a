"""``build_world``: catalog → users → simulated days → Parquet tables, truth, eval sets, world.json.

Layout of a world folder::

    videos.parquet                      video_id, title, caption, tags, category, upload_ts, duration_ms
    train/search_log.parquet            request_id, user_id, ts, query, video_id, stage, position, clicked, play_ms
    train/rec_log.parquet               user_id, ts, video_id, action, play_ms
    test/...                            the same for the test days (ts >= split_ts)
    truth/relevance.parquet             query, video_id, grade (1..3; absent = 0)
    truth/queries.parquet               query, query_class, ambiguous, intent_ids, topic_ids, surface, ...
    truth/requests.parquet              per request: session, true need, reformulation parent/origin, satisfied
    truth/video_intents.parquet         per video: primary/secondary topic & intent, modifier, quality
    truth/topics.parquet, truth/intents.parquet   the ontology
    eval/ct.parquet, eval/qr.parquet    query, video_id, query_class, ambiguous
    eval/graded.parquet                 query, video_id, grade (0..3), query_class, ambiguous
    state/legacy_stack.npz              the legacy ranking stage's learned state at the end of the logs
    ontology.txt                        the vocabulary the world was built on (``--ontology``)
    world.json                          config, seed, split_ts, counts, build time
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write_json
from core.errors import CropsError, ErrorKind
from core.logs import REC_LOG, SEARCH_LOG
from world.catalog import Catalog, catalog_for, modifier_ids
from world.config import WorldConfig
from world.files import atomic_path, write_parquet
from world.legacy import LegacyStack
from world.ontology import VOCABULARY_FILE, Ontology, parse_vocabulary
from world.platform import STATE_FILE
from world.population import DAY_MS, make_users
from world.queries import LEVELS, QueryBook
from world.relevance import VideoIndex, grade_need, grade_pairs
from world.seeding import stream
from world.simulate import ACTIONS, STAGES, Logs, simulate

log = logging.getLogger(__name__)
ONTOLOGY_FILE = "ontology.txt"
WORLD_FORMAT_VERSION = 1


def _dict(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    """A dictionary-encoded string column (cheap for 10M rows of repeated ids and queries)."""
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(values, pa.string()))


def _cat(xs: list[np.ndarray], dtype: Any = None) -> np.ndarray:
    out = np.concatenate(xs) if xs else np.empty(0)
    return out.astype(dtype) if dtype is not None else out


def build_world(
    out: Path,
    cfg: WorldConfig | None = None,
    *,
    seed: int = 0,
    source: str | None = None,
    progress: bool = True,
    ontology: Path | None = None,
) -> dict[str, Any]:
    """Build a world into ``out``; returns the ``world.json`` dict. ``ontology``: a vocabulary file
    of the embedded one's format (``world/vocabulary.txt``), for a world on other topics; the world
    keeps a copy (``ontology.txt``) so that everything reading it uses the same topics."""
    cfg = cfg or WorldConfig()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    onto_path = Path(ontology) if ontology is not None else VOCABULARY_FILE
    if not onto_path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"ontology {onto_path} does not exist")
    onto_text = onto_path.read_text(encoding="utf-8")
    try:
        onto = parse_vocabulary(onto_text)
    except ValueError as exc:
        raise CropsError(ErrorKind.INVALID_INPUT, f"ontology {onto_path}: {exc}") from exc
    with atomic_path(out / ONTOLOGY_FILE) as tmp:
        tmp.write_text(onto_text, encoding="utf-8")
    cat = catalog_for(cfg, seed, source=source, progress=progress, onto=onto)
    users = make_users(onto, cfg, seed)
    t_cat = time.perf_counter()
    stack = LegacyStack(cat, cfg.legacy)
    logs, book = simulate(cat, onto, users, cfg, seed, progress=progress, state=stack)
    t_sim = time.perf_counter()
    # the ranking stage as the logged days left it: world.Platform continues from here
    with atomic_path(out / STATE_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **stack.state_arrays())  # type: ignore[arg-type]
    split_ts = cfg.start_ts_ms + (cfg.days - cfg.test_days) * DAY_MS
    counts = _write_tables(out, cat, onto, users.ids, logs, book, cfg, seed, split_ts)
    t_end = time.perf_counter()
    info: dict[str, Any] = {
        "format_version": WORLD_FORMAT_VERSION,
        "seed": seed,
        "catalog_source": source,
        "ontology_file": ONTOLOGY_FILE,
        "ontology_source": str(ontology) if ontology is not None else "embedded",
        "config": cfg.model_dump(mode="json"),
        "start_ts": cfg.start_ts_ms,
        "split_ts": split_ts,
        "end_ts": cfg.start_ts_ms + cfg.days * DAY_MS,
        "train_days": cfg.days - cfg.test_days,
        "test_days": cfg.test_days,
        "counts": counts,
        "ambiguous_heads": onto.ambiguous_heads(),
        "build_seconds": {
            "catalog": round(t_cat - t0, 2),
            "simulate": round(t_sim - t_cat, 2),
            "write": round(t_end - t_sim, 2),
            "total": round(t_end - t0, 2),
        },
        "host": {"python": platform.python_version(), "machine": platform.machine()},
    }
    atomic_write_json(out / "world.json", info)
    return info


def _write_tables(
    out: Path,
    cat: Catalog,
    onto: Ontology,
    user_ids: list[str],
    logs: Logs,
    book: QueryBook,
    cfg: WorldConfig,
    seed: int,
    split_ts: int,
) -> dict[str, int]:
    vid_ids = cat.video_id
    write_parquet(cat.videos_table(), out / "videos.parquet")
    write_parquet(cat.intents_table(onto), out / "truth" / "video_intents.parquet")
    _write_ontology(out, onto)

    # ---- requests
    r_sess = _cat(logs.req_session, np.int64)
    r_ts = _cat(logs.req_ts, np.int64)
    r_sid = _cat(logs.req_sid, np.int64)
    r_parent = _cat(logs.req_parent, np.int64)
    r_origin = _cat(logs.req_origin, np.int64)
    r_sat = _cat(logs.req_satisfied, bool)
    n_req = len(r_ts)
    s_user = _cat([s.user for s in logs.sessions], np.int64)
    s_topic = _cat([s.topic for s in logs.sessions], np.int64)
    s_intent = _cat([s.intent for s in logs.sessions], np.int64)
    s_mod = _cat([s.modifier for s in logs.sessions], np.int64)
    s_switch = _cat([s.topic_switch for s in logs.sessions], bool)
    r_user = s_user[r_sess]
    width = max(7, len(str(n_req)))
    req_ids = [f"r{i:0{width}d}" for i in range(n_req)]
    r_test = r_ts >= split_ts

    # ---- search log
    row_req = _cat(logs.row_req, np.int64)
    row_vid = _cat(logs.row_vid, np.int64)
    row_stage = _cat(logs.row_stage, np.int8)
    row_pos = _cat(logs.row_pos, np.int16)
    row_click = _cat(logs.row_click, bool)
    row_play = _cat(logs.row_play, np.int64)
    row_grade = _cat(logs.row_grade, np.int8)  # truth: the user's own grade of each candidate
    user_rel = row_grade >= cfg.clicks.satisfied_grade
    r_ret_rel = np.bincount(row_req, weights=user_rel, minlength=n_req).astype(np.int32)
    r_exp_rel = np.bincount(row_req, weights=user_rel & (row_stage == 2), minlength=n_req).astype(np.int32)
    # position of the first exposed video relevant to the user (-1: none): how far they had to look
    r_first_rel = np.full(n_req, np.iinfo(np.int32).max, np.int64)
    m_er = user_rel & (row_stage == 2)
    np.minimum.at(r_first_rel, row_req[m_er], row_pos[m_er].astype(np.int64))
    r_first_rel = np.where(r_first_rel == np.iinfo(np.int32).max, -1, r_first_rel).astype(np.int32)
    r_cands = np.bincount(row_req, minlength=n_req).astype(np.int32)
    row_test = r_test[row_req]
    for part, mask in (("train", ~row_test), ("test", row_test)):
        rq = row_req[mask]
        table = pa.table(
            {
                "request_id": _dict(rq, req_ids),
                "user_id": _dict(r_user[rq], user_ids),
                "ts": pa.array(r_ts[rq], pa.int64()),
                "query": _dict(r_sid[rq], book.strings),
                "video_id": _dict(row_vid[mask], vid_ids),
                "stage": _dict(row_stage[mask], list(STAGES)),
                "position": pa.array(row_pos[mask], pa.int16()),
                "clicked": pa.array(row_click[mask], pa.bool_()),
                "play_ms": pa.array(row_play[mask], pa.int64()),
            }
        )
        write_parquet(SEARCH_LOG.stamp(table), out / part / SEARCH_LOG.file)

    # ---- rec log
    rec_user = _cat(logs.rec_user, np.int64)
    rec_ts = _cat(logs.rec_ts, np.int64)
    rec_vid = _cat(logs.rec_vid, np.int64)
    rec_act = _cat(logs.rec_action, np.int8)
    rec_play = _cat(logs.rec_play, np.int64)
    rec_sess = _cat(logs.rec_session, np.int64)
    order = np.lexsort((rec_ts, rec_user))
    for part, m in (("train", rec_ts[order] < split_ts), ("test", rec_ts[order] >= split_ts)):
        o = order[m]
        write_parquet(
            REC_LOG.stamp(
                pa.table(
                    {
                        "user_id": _dict(rec_user[o], user_ids),
                        "ts": pa.array(rec_ts[o], pa.int64()),
                        "video_id": _dict(rec_vid[o], vid_ids),
                        "action": _dict(rec_act[o], list(ACTIONS)),
                        "play_ms": pa.array(rec_play[o], pa.int64()),
                    }
                )
            ),
            out / part / REC_LOG.file,
        )
    # which feed rows leaned toward a search session (truth, for the report)
    write_parquet(
        pa.table(
            {
                "user_id": _dict(rec_user[order], user_ids),
                "ts": pa.array(rec_ts[order], pa.int64()),
                "video_id": _dict(rec_vid[order], vid_ids),
                "lean_session": pa.array(rec_sess[order], pa.int64()),
            }
        ),
        out / "truth" / "rec_lean.parquet",
    )

    # ---- request truth
    fac = onto.intent_facet
    write_parquet(
        pa.table(
            {
                "request_id": pa.array(req_ids, pa.string()),
                "session_id": pa.array(r_sess, pa.int64()),
                "user_id": _dict(r_user, user_ids),
                "ts": pa.array(r_ts, pa.int64()),
                "query": _dict(r_sid, book.strings),
                "need_topic": pa.array(s_topic[r_sess], pa.int32()),
                "need_intent": pa.array(s_intent[r_sess], pa.int32()),
                "need_facet": pa.array([fac[i] for i in s_intent[r_sess]], pa.string()),
                "need_modifier": pa.array(s_mod[r_sess], pa.int32()),
                "is_reformulation": pa.array(r_parent >= 0, pa.bool_()),
                "parent_request_id": pa.array([req_ids[p] if p >= 0 else None for p in r_parent], pa.string()),
                "origin_request_id": pa.array([req_ids[o] for o in r_origin], pa.string()),
                "topic_switch_session": pa.array(s_switch[r_sess], pa.bool_()),
                "satisfied": pa.array(r_sat, pa.bool_()),
                "n_candidates": pa.array(r_cands, pa.int32()),
                "retrieved_user_relevant": pa.array(r_ret_rel, pa.int32()),
                "exposed_user_relevant": pa.array(r_exp_rel, pa.int32()),
                "first_user_relevant_position": pa.array(r_first_rel, pa.int32()),
                "split": pa.array(np.where(r_test, "test", "train"), pa.string()),
            }
        ),
        out / "truth" / "requests.parquet",
    )

    # ---- queries + graded relevance (per string: max over its senses)
    n_q = len(book.strings)
    q_level = np.array([book.string_level(i) for i in range(n_q)], np.int8)
    q_amb = np.array([book.ambiguous(i) for i in range(n_q)], bool)
    q_typo = np.array([book.typo(i) for i in range(n_q)], bool)
    q_train = np.bincount(r_sid[~r_test], minlength=n_q)
    q_test = np.bincount(r_sid[r_test], minlength=n_q)
    index = VideoIndex.build(cat)
    cache: dict[tuple[tuple[int, int, int], ...], tuple[np.ndarray, np.ndarray]] = {}
    # streamed in row groups: at 200k+ videos this table has tens of millions of rows
    q_dict, v_dict = pa.array(book.strings, pa.string()), pa.array(vid_ids, pa.string())
    schema = pa.schema(
        [
            ("query", pa.dictionary(pa.int32(), pa.string())),
            ("video_id", pa.dictionary(pa.int32(), pa.string())),
            ("grade", pa.int8()),
        ]
    )
    senses_of = []
    n_rel = 0
    with (
        atomic_path(out / "truth" / "relevance.parquet") as tmp,
        pq.ParquetWriter(tmp, schema, compression="zstd") as writer,
    ):
        rel_q: list[np.ndarray] = []
        rel_v: list[np.ndarray] = []
        rel_g: list[np.ndarray] = []
        buffered = 0
        for i in range(n_q):
            senses = tuple(book.string_senses(i))
            senses_of.append(senses)
            if senses not in cache:
                cache[senses] = grade_need(cat, index, list(senses))
            v, g = cache[senses]
            if cfg.relevance_min_grade > 1:
                keep = g >= cfg.relevance_min_grade
                v, g = v[keep], g[keep]
            rel_q.append(np.full(len(v), i, np.int32))
            rel_v.append(v.astype(np.int32))
            rel_g.append(g)
            buffered += len(v)
            if buffered >= 2_000_000 or i == n_q - 1:
                writer.write_table(
                    pa.table(
                        {
                            "query": pa.DictionaryArray.from_arrays(pa.array(np.concatenate(rel_q)), q_dict),
                            "video_id": pa.DictionaryArray.from_arrays(pa.array(np.concatenate(rel_v)), v_dict),
                            "grade": pa.array(np.concatenate(rel_g), pa.int8()),
                        },
                        schema=schema,
                    )
                )
                n_rel += buffered
                rel_q, rel_v, rel_g, buffered = [], [], [], 0
    mods_inv = {v: k[1] for k, v in modifier_ids(onto).items()}
    key0 = [book.keys[min(book.string_keys[i])] for i in range(n_q)]
    intent_ids = []
    for i in range(n_q):
        ids: list[int] = []
        for t, it, _m in senses_of[i]:
            if it >= 0:
                ids.append(it)
            else:
                ids += [j for j in range(onto.n_intents) if onto.intent_topic[j] == t]
        intent_ids.append(sorted(set(ids)))
    write_parquet(
        pa.table(
            {
                "query": pa.array(book.strings, pa.string()),
                "query_class": pa.array([LEVELS[x] for x in q_level], pa.string()),
                "ambiguous": pa.array(q_amb, pa.bool_()),
                "intent_ids": pa.array(intent_ids, pa.list_(pa.int32())),
                "topic_ids": pa.array([sorted({s[0] for s in ss}) for ss in senses_of], pa.list_(pa.int32())),
                "surface": pa.array([k[0] for k in key0], pa.string()),
                "facet": pa.array([k[1] for k in key0], pa.string()),
                "modifier": pa.array([k[2] for k in key0], pa.string()),
                "n_train": pa.array(q_train, pa.int64()),
                "n_test": pa.array(q_test, pa.int64()),
                "n_relevant": pa.array([int((cache[s][1] >= 2).sum()) for s in senses_of], pa.int32()),
                "typo": pa.array(q_typo, pa.bool_()),
            }
        ),
        out / "truth" / "queries.parquet",
    )
    del mods_inv

    # ---- eval sets (test days)
    n_v = len(vid_ids)
    clicked_train = row_click & ~row_test
    train_pairs = np.unique(r_sid[row_req[clicked_train]].astype(np.int64) * n_v + row_vid[clicked_train])

    def with_class(q: np.ndarray, v: np.ndarray) -> dict[str, Any]:
        pairs = np.unique(np.stack([q, v], axis=1), axis=0) if len(q) else np.empty((0, 2), np.int64)
        return {
            "query": _dict(pairs[:, 0], book.strings),
            "video_id": _dict(pairs[:, 1], vid_ids),
            "query_class": pa.array([LEVELS[x] for x in q_level[pairs[:, 0]]], pa.string()),
            "ambiguous": pa.array(q_amb[pairs[:, 0]], pa.bool_()),
            "typo": pa.array(q_typo[pairs[:, 0]], pa.bool_()),
            "query_seen_in_training": pa.array(q_train[pairs[:, 0]] > 0, pa.bool_()),
            # the pair was already clicked in the training days: recalling it rewards imitating the logs
            "pair_seen_in_training": pa.array(np.isin(pairs[:, 0] * n_v + pairs[:, 1], train_pairs), pa.bool_()),
        }

    clicked_test = row_click & row_test
    ct = with_class(r_sid[row_req[clicked_test]], row_vid[clicked_test])
    write_parquet(pa.table(ct), out / "eval" / "ct.parquet")
    # QR: an earlier query of the chain → videos clicked after its reformulation (test days)
    cq, cv = [], []
    creq = row_req[clicked_test]
    cvid = row_vid[clicked_test]
    anc = r_parent[creq]
    for _ in range(cfg.clicks.max_reformulations):
        m = anc >= 0
        keep = m & (r_sid[np.maximum(anc, 0)] != r_sid[creq])
        cq.append(r_sid[anc[keep]])
        cv.append(cvid[keep])
        anc = np.where(m, r_parent[np.maximum(anc, 0)], -1)
    qr = with_class(_cat(cq, np.int64), _cat(cv, np.int64))
    write_parquet(pa.table(qr), out / "eval" / "qr.parquet")
    graded = _graded_sample(cfg, seed, q_level, q_test, cache, senses_of, row_req, row_vid, row_stage, r_sid, row_test)
    gq, gv, gg = graded
    write_parquet(
        pa.table(
            {
                "query": _dict(gq, book.strings),
                "video_id": _dict(gv, vid_ids),
                "grade": pa.array(gg, pa.int8()),
                "query_class": pa.array([LEVELS[x] for x in q_level[gq]], pa.string()),
                "ambiguous": pa.array(q_amb[gq], pa.bool_()),
                "typo": pa.array(q_typo[gq], pa.bool_()),
            }
        ),
        out / "eval" / "graded.parquet",
    )
    sq, sr, sv, sg, sqg = _graded_sense_sample(
        cat,
        cfg,
        seed,
        q_level,
        q_amb,
        r_sid,
        r_test,
        s_topic[r_sess],
        s_intent[r_sess],
        s_mod[r_sess],
        cache,
        senses_of,
        row_req,
        row_vid,
        row_stage,
    )
    write_parquet(
        pa.table(
            {
                "request_id": pa.array([req_ids[i] for i in sr], pa.string()),
                "query": _dict(sq, book.strings),
                "video_id": _dict(sv, vid_ids),
                "grade": pa.array(sg, pa.int8()),
                "query_grade": pa.array(sqg, pa.int8()),
                "need_topic": pa.array(s_topic[r_sess][sr], pa.int32()),
                "query_class": pa.array([LEVELS[x] for x in q_level[sq]], pa.string()),
                "ambiguous": pa.array(q_amb[sq], pa.bool_()),
                "typo": pa.array(q_typo[sq], pa.bool_()),
            }
        ),
        out / "eval" / "graded_sense.parquet",
    )
    return {
        "videos": len(cat),
        "users": len(user_ids),
        "requests": n_req,
        "train_requests": int((~r_test).sum()),
        "test_requests": int(r_test.sum()),
        "sessions": logs.n_sessions,
        "search_log_rows": len(row_req),
        "rec_log_rows": len(rec_ts),
        "queries": n_q,
        "relevance_rows": n_rel,
        "ct_pairs": len(ct["query"]),
        "qr_pairs": len(qr["query"]),
        "graded_rows": len(gq),
        "graded_queries": len(np.unique(gq)),
        "graded_sense_rows": len(sq),
        "graded_sense_requests": len(np.unique(sr)),
    }


def _graded_sense_sample(
    cat: Catalog,
    cfg: WorldConfig,
    seed: int,
    q_level: np.ndarray,
    q_amb: np.ndarray,
    r_sid: np.ndarray,
    r_test: np.ndarray,
    need_t: np.ndarray,
    need_i: np.ndarray,
    need_m: np.ndarray,
    cache: dict[Any, tuple[np.ndarray, np.ndarray]],
    senses_of: list[Any],
    row_req: np.ndarray,
    row_vid: np.ndarray,
    row_stage: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Sense-aware labels: test *requests* (a quarter each: head, torso, tail, and ambiguous of any
    class), each judged by that user's own need, over every video relevant to any sense of the query
    plus up to 10 exposed irrelevant ones. Returns (query, request, video, grade, query grade)."""
    rng = stream(seed, "graded-sense")
    per = max(1, cfg.graded_queries // 4)
    chosen: list[int] = []
    strata = [(q_level == lvl) & ~q_amb for lvl in range(3)] + [q_amb]
    for st in strata:
        cand = np.flatnonzero(r_test & st[r_sid])
        cand = cand[[len(cache[senses_of[int(r_sid[i])]][0]) > 0 for i in cand]] if len(cand) else cand
        take = min(per, len(cand))
        chosen += sorted(rng.choice(cand, size=take, replace=False).tolist()) if take else []
    exposed = row_stage == 2
    order = np.argsort(row_req, kind="stable")
    starts = np.searchsorted(row_req[order], np.arange(len(r_sid) + 1))
    out_q, out_r, out_v, out_g, out_qg = [], [], [], [], []
    for r in chosen:
        q = int(r_sid[r])
        v, qg = cache[senses_of[q]]
        rows = order[starts[r] : starts[r + 1]]
        neg = np.setdiff1d(np.unique(row_vid[rows[exposed[rows]]]), v)[:10]
        vids = np.concatenate([v, neg]).astype(np.int64)
        n = len(vids)
        g = grade_pairs(cat, vids, np.full(n, need_t[r]), np.full(n, need_i[r]), np.full(n, need_m[r]))
        out_q.append(np.full(n, q))
        out_r.append(np.full(n, r))
        out_v.append(vids)
        out_g.append(g)
        out_qg.append(np.concatenate([qg, np.zeros(len(neg), np.int8)]))
    return (
        _cat(out_q, np.int64),
        _cat(out_r, np.int64),
        _cat(out_v, np.int64),
        _cat(out_g, np.int8),
        _cat(out_qg, np.int8),
    )


def _graded_sample(
    cfg: WorldConfig,
    seed: int,
    q_level: np.ndarray,
    q_test: np.ndarray,
    cache: dict[Any, tuple[np.ndarray, np.ndarray]],
    senses_of: list[Any],
    row_req: np.ndarray,
    row_vid: np.ndarray,
    row_stage: np.ndarray,
    r_sid: np.ndarray,
    row_test: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'Human labels' for NDCG@4: test queries (equal share per class), every graded video plus up to
    10 videos the legacy stack exposed for it that are not relevant (judged zeros)."""
    rng = stream(seed, "graded")
    chosen: list[int] = []
    per = max(1, cfg.graded_queries // 3)
    for lvl in range(3):
        cand = np.flatnonzero((q_test > 0) & (q_level == lvl))
        cand = cand[[len(cache[senses_of[i]][0]) > 0 for i in cand]] if len(cand) else cand
        take = min(per, len(cand))
        chosen += sorted(rng.choice(cand, size=take, replace=False).tolist()) if take else []
    exposed = row_test & (row_stage == 2)
    eq, ev = r_sid[row_req[exposed]], row_vid[exposed]
    gq, gv, gg = [], [], []
    for q in chosen:
        v, g = cache[senses_of[q]]
        neg = np.setdiff1d(np.unique(ev[eq == q]), v)[:10]
        gq.append(np.full(len(v) + len(neg), q))
        gv.append(np.concatenate([v, neg]))
        gg.append(np.concatenate([g, np.zeros(len(neg), np.int8)]))
    return _cat(gq, np.int64), _cat(gv, np.int64), _cat(gg, np.int8)


def _write_ontology(out: Path, onto: Ontology) -> None:
    write_parquet(
        pa.table(
            {
                "topic_id": pa.array([t.topic_id for t in onto.topics], pa.int32()),
                "key": pa.array([t.key for t in onto.topics], pa.string()),
                "category": pa.array([t.category for t in onto.topics], pa.string()),
                "head": pa.array([t.head for t in onto.topics], pa.string()),
                "names": pa.array([list(t.names) for t in onto.topics], pa.list_(pa.string())),
                "synonyms": pa.array([list(t.synonyms) for t in onto.topics], pa.list_(pa.string())),
                "vocab": pa.array([list(t.vocab) for t in onto.topics], pa.list_(pa.string())),
                "modifiers": pa.array([list(t.modifiers) for t in onto.topics], pa.list_(pa.string())),
            }
        ),
        out / "truth" / "topics.parquet",
    )
    write_parquet(
        pa.table(
            {
                "intent_id": pa.array(np.arange(onto.n_intents), pa.int32()),
                "topic_id": pa.array(onto.intent_topic, pa.int32()),
                "facet": pa.array(onto.intent_facet, pa.string()),
            }
        ),
        out / "truth" / "intents.parquet",
    )


def read_world_info(world_dir: Path) -> dict[str, Any]:
    from core.errors import CropsError, ErrorKind

    p = world_dir / "world.json"
    if not p.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{world_dir} is not a world (no world.json)")
    info: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    return info
