"""The event simulation: day by day, sessions search through the legacy stack, users click by their
true intent with position bias, unsatisfied users reformulate within the window, and the
recommender feed runs beside search (leaning toward a search's intent around it). At the end of
each day the legacy stack learns from what it exposed (the feedback loop)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from world.catalog import Catalog
from world.config import WorldConfig
from world.funnel import (
    ACTIONS,
    STAGES,
    Draws,
    FeedSampler,
    background_feed,
    candidate_matrix,
    follow_ups,
    leaning_feed,
    phrase_first,
    rank_expose_click,
)
from world.legacy import LegacyStack
from world.ontology import Ontology
from world.population import DAY_MS, Sessions, Users, make_sessions
from world.queries import QueryBook
from world.retrieval import LexicalRetriever, candidates_of
from world.seeding import stream
from world.textgen import QueryKnobs

__all__ = ["ACTIONS", "STAGES", "Logs", "simulate"]


@dataclass
class Logs:
    """Everything that happened, as column arrays (indices into the catalog / users / query book)."""

    # search_log rows
    row_req: list[np.ndarray] = field(default_factory=list)
    row_vid: list[np.ndarray] = field(default_factory=list)
    row_stage: list[np.ndarray] = field(default_factory=list)
    row_pos: list[np.ndarray] = field(default_factory=list)
    row_click: list[np.ndarray] = field(default_factory=list)
    row_play: list[np.ndarray] = field(default_factory=list)
    row_grade: list[np.ndarray] = field(default_factory=list)  # truth: the user's grade of the video
    # requests
    req_session: list[np.ndarray] = field(default_factory=list)
    req_ts: list[np.ndarray] = field(default_factory=list)
    req_sid: list[np.ndarray] = field(default_factory=list)
    req_parent: list[np.ndarray] = field(default_factory=list)
    req_origin: list[np.ndarray] = field(default_factory=list)
    req_satisfied: list[np.ndarray] = field(default_factory=list)
    # sessions (global index = order of creation)
    sessions: list[Sessions] = field(default_factory=list)
    # rec_log rows
    rec_user: list[np.ndarray] = field(default_factory=list)
    rec_ts: list[np.ndarray] = field(default_factory=list)
    rec_vid: list[np.ndarray] = field(default_factory=list)
    rec_action: list[np.ndarray] = field(default_factory=list)
    rec_play: list[np.ndarray] = field(default_factory=list)
    rec_session: list[np.ndarray] = field(default_factory=list)  # -1 background, else the leaning session
    n_requests: int = 0
    n_sessions: int = 0


def simulate(
    cat: Catalog,
    onto: Ontology,
    users: Users,
    cfg: WorldConfig,
    seed: int,
    *,
    progress: bool = True,
    state: LegacyStack | None = None,
) -> tuple[Logs, QueryBook]:
    """Run the logged days through the legacy stack (``state``: pass a stack to keep its learned state)."""
    q = cfg.queries
    book = QueryBook(onto, QueryKnobs(q.typo_prob, q.slang_prob, q.synonym_query_prob, q.name_query_prob))
    legacy = state if state is not None else LegacyStack(cat, cfg.legacy)
    retriever = LexicalRetriever(legacy, cat.video_id)
    feed = FeedSampler(cat, onto, cfg, seed)
    user_ids = [""] * len(users)  # the legacy retriever ignores the user
    logs = Logs()
    ck = cfg.clicks
    K = cfg.legacy.retrieve_k
    per_day = cfg.n_requests / cfg.days
    # sessions per day are fixed up front (not steered by outcomes), so that changing a mechanism's
    # knob never changes who searches for what; the request total is then approximate
    n_sess_day = max(1, round(per_day / cfg.requests_per_session))
    bar = tqdm(total=cfg.n_requests, desc="search requests", unit="req", disable=not progress, mininterval=2.0)
    for day in range(cfg.days):
        rng = stream(seed, f"search-{day}")
        n_sess = n_sess_day
        s = make_sessions(onto, users, cfg, seed, day, n_sess)
        off = logs.n_sessions
        legacy.start_day(cfg.start_ts_ms + day * DAY_MS)
        u = rng.random((n_sess, 10))
        sids, surf = phrase_first(book, onto, s, np.arange(n_sess), u)
        sess = np.arange(n_sess)
        ts = s.start_ts.copy()
        sid = np.array(sids, np.int64)
        level = s.level.astype(np.int64)
        parent = np.full(n_sess, -1, np.int64)
        day_q: list[np.ndarray] = []
        day_v: list[np.ndarray] = []
        day_c: list[np.ndarray] = []
        for rnd in range(ck.max_reformulations + 1):
            if len(sess) == 0:
                break
            rid = logs.n_requests + np.arange(len(sess))
            if rnd == 0:
                origin = rid
            texts = [book.strings[int(x)] for x in sid]
            V = candidate_matrix(
                [
                    candidates_of(retriever, t, user_ids[int(us)], K, {})
                    for t, us in zip(texts, s.user[sess], strict=True)
                ],
                K,
            )
            draws = Draws(rng, len(sess))
            out = rank_expose_click(
                legacy, cat, cfg, texts, V, s.topic[sess], s.intent[sess], s.modifier[sess], draws, book
            )
            logs.row_req.append(rid[out.row])
            logs.row_vid.append(out.vid)
            logs.row_stage.append(out.stage)
            logs.row_pos.append(out.pos.astype(np.int16))
            logs.row_click.append(out.click)
            logs.row_play.append(out.play)
            logs.row_grade.append(out.grade)
            logs.req_session.append(sess + off)
            logs.req_ts.append(ts)
            logs.req_sid.append(sid)
            logs.req_parent.append(parent)
            logs.req_origin.append(origin)
            logs.req_satisfied.append(out.satisfied)
            qk = np.array([legacy.qkey(t) for t in texts], np.int64)
            day_q.append(qk[out.row])
            day_v.append(out.vid)
            day_c.append(out.click)
            logs.n_requests += len(sess)
            bar.update(len(sess))
            if rnd == ck.max_reformulations:
                break
            fu = follow_ups(book, onto, cfg, draws, s, sess, level, surf, ts, out.satisfied)
            if len(fu.idx) == 0:
                break
            sess, sid, level, parent, origin = sess[fu.idx], fu.sid, fu.level, rid[fu.idx], origin[fu.idx]
            ts, surf = fu.ts, fu.surface
        logs.sessions.append(s)
        logs.n_sessions += n_sess
        # the feed: background (interest only) + leaning toward today's search intents
        bg = background_feed(cat, users, feed, cfg, seed, day, round(cfg.rec.per_request * per_day))
        ln = leaning_feed(cat, users, feed, cfg, s, Draws(stream(seed, f"lean-{day}"), len(s)))
        for arrs, sess_col in ((bg, np.full(len(bg[0]), -1, np.int64)), (ln[:5], ln[5] + off)):
            logs.rec_user.append(arrs[0])
            logs.rec_ts.append(arrs[1])
            logs.rec_vid.append(arrs[2])
            logs.rec_action.append(arrs[3])
            logs.rec_play.append(arrs[4])
            logs.rec_session.append(sess_col)
        feed_views = np.concatenate([bg[2][bg[3] != 4], ln[2][ln[3] != 4]])
        legacy.end_day(np.concatenate(day_q), np.concatenate(day_v), np.concatenate(day_c), feed_views)
    bar.close()
    return logs, book
