"""The event simulation: day by day, sessions search through the legacy stack, users click by their
true intent with position bias, unsatisfied users reformulate within the window, and the
recommender feed runs beside search (leaning toward a search's intent around it). At the end of
each day the legacy stack learns from what it exposed (the feedback loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from world.catalog import Catalog, topic_popularity
from world.config import WorldConfig
from world.legacy import LegacyStack
from world.ontology import Ontology
from world.population import DAY_MS, Sessions, Users, make_sessions
from world.queries import QueryBook
from world.relevance import grade_pairs
from world.seeding import stream
from world.textgen import QueryKnobs

STAGES = ("prerank_filtered", "rank_unexposed", "exposed")
ACTIONS = ("view", "like", "share", "comment", "skip")


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


@dataclass
class _Pool:
    order: np.ndarray  # videos sorted by upload time
    up: np.ndarray  # their upload times
    cq: np.ndarray  # cumulative quality in that order


def _pools(cat: Catalog, key: np.ndarray) -> dict[int, _Pool]:
    out: dict[int, _Pool] = {}
    order = np.lexsort((cat.upload_ts, key))
    k = key[order]
    uniq, starts = np.unique(k, return_index=True)
    ends = np.append(starts[1:], len(k))
    for v, a, b in zip(uniq, starts, ends, strict=True):
        if v >= 0:
            o = order[a:b]
            out[int(v)] = _Pool(o, cat.upload_ts[o], np.cumsum(cat.quality[o].astype(np.float64)))
    return out


class FeedSampler:
    """The recommender: interest → topic → video ∝ quality, only among uploaded videos."""

    def __init__(self, cat: Catalog, onto: Ontology, cfg: WorldConfig, seed: int) -> None:
        self.topic_pop = topic_popularity(onto, seed, cfg.users.topic_concentration)
        self.by_topic = _pools(cat, cat.p_topic)
        self.by_intent = _pools(cat, cat.p_intent)
        self.cat_topics = [np.flatnonzero(onto.topic_category == c) for c in range(len(onto.categories))]

    @staticmethod
    def sample(pools: dict[int, _Pool], keys: np.ndarray, ts: np.ndarray, u: np.ndarray) -> np.ndarray:
        """For each row, a video of pool ``keys[i]`` ∝ quality among those uploaded before ``ts[i]``."""
        out = np.full(len(keys), -1, np.int64)
        if len(keys) == 0:
            return out
        order = np.argsort(keys, kind="stable")
        uniq, starts = np.unique(keys[order], return_index=True)
        ends = np.append(starts[1:], len(keys))
        for k, a, b in zip(uniq, starts, ends, strict=True):
            pool = pools.get(int(k))
            if pool is None:
                continue
            rows = order[a:b]
            n_av = np.searchsorted(pool.up, ts[rows], side="left")
            ok = n_av > 0
            last = np.maximum(n_av - 1, 0)
            j = np.minimum(np.searchsorted(pool.cq, u[rows] * pool.cq[last], side="right"), last)
            out[rows[ok]] = pool.order[j[ok]]
        return out

    def interest_topics(self, interests: np.ndarray, u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
        cum = np.cumsum(interests, axis=1)
        c = np.minimum((cum < u1[:, None] * cum[:, -1:]).sum(axis=1), len(self.cat_topics) - 1)
        out = np.empty(len(c), np.int64)
        for ci in np.unique(c):
            rows = np.flatnonzero(c == ci)
            cand = self.cat_topics[int(ci)]
            w = np.cumsum(self.topic_pop[cand])
            out[rows] = cand[np.minimum(np.searchsorted(w, u2[rows] * w[-1]), len(cand) - 1)]
        return out


def _actions(rng: np.random.Generator, n: int, skip_prob: float, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = rng.random(n)
    act = np.where(r < skip_prob, 4, np.searchsorted(np.array([0.75, 0.9, 0.95, 1.0]), rng.random(n)))
    frac = np.where(act == 4, rng.uniform(0.02, 0.15, n), rng.beta(2.5, 1.5, n))
    return act.astype(np.int8), (dur * frac).astype(np.int64)


def background_feed(
    cat: Catalog, users: Users, feed: FeedSampler, cfg: WorldConfig, seed: int, day: int, n: int
) -> tuple[np.ndarray, ...]:
    """``n`` feed interactions on ``day`` driven by interests only (independent of search)."""
    rng = stream(seed, f"feed-{day}")
    user = rng.choice(len(users), size=n, p=users.activity)
    ts = cfg.start_ts_ms + day * DAY_MS + rng.integers(0, DAY_MS, n)
    u = rng.random((n, 3))
    topic = feed.interest_topics(users.interests[user], u[:, 0], u[:, 1])
    vid = feed.sample(feed.by_topic, topic, ts, u[:, 2])
    ok = vid >= 0
    user, ts, vid = user[ok], ts[ok], vid[ok]
    act, play = _actions(rng, len(vid), 0.3, cat.duration_ms[vid])
    return user, ts, vid, act, play


def leaning_feed(
    cat: Catalog,
    users: Users,
    feed: FeedSampler,
    cfg: WorldConfig,
    seed: int,
    day: int,
    s: Sessions,
    session_offset: int,
) -> tuple[np.ndarray, ...]:
    """Around a search, the feed leans toward the session's intent (strength = lean_prob/count)."""
    k = cfg.rec
    rng = stream(seed, f"lean-{day}")
    lean = rng.random(len(s)) < k.lean_prob
    counts = np.where(lean, rng.poisson(k.lean_count, len(s)), 0)
    idx = np.repeat(np.arange(len(s)), counts)
    n = len(idx)
    # mostly after the search (the feed reacts to it), some before (interest was already there)
    ts = s.start_ts[idx] + (rng.uniform(-0.3, 1.0, n) * k.lean_window_s * 1000).astype(np.int64)
    u = rng.random((n, 4))
    noise = u[:, 0] < k.lean_noise
    by_intent = (~noise) & (u[:, 1] < 0.7)
    by_topic = (~noise) & ~by_intent
    vid = np.full(n, -1, np.int64)
    vid[by_intent] = feed.sample(feed.by_intent, s.intent[idx[by_intent]], ts[by_intent], u[by_intent, 3])
    vid[by_topic] = feed.sample(feed.by_topic, s.topic[idx[by_topic]], ts[by_topic], u[by_topic, 3])
    if noise.any():
        t = feed.interest_topics(users.interests[s.user[idx[noise]]], u[noise, 1], u[noise, 2])
        vid[noise] = feed.sample(feed.by_topic, t, ts[noise], u[noise, 3])
    ok = vid >= 0
    idx, ts, vid = idx[ok], ts[ok], vid[ok]
    act, play = _actions(rng, len(vid), 0.1, cat.duration_ms[vid])
    return s.user[idx], ts, vid, act, play, idx + session_offset


def _serve(
    legacy: LegacyStack,
    cat: Catalog,
    book: QueryBook,
    cfg: WorldConfig,
    rng: np.random.Generator,
    sid: np.ndarray,
    need_t: np.ndarray,
    need_i: np.ndarray,
    need_m: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Run the stack for a batch of requests → (row req idx, vid, stage, pos, click, play, grade, satisfied)."""
    kn, ck = cfg.legacy, cfg.clicks
    n = len(sid)
    K, P, E = kn.retrieve_k, min(kn.prerank_k, kn.retrieve_k), min(kn.expose_k, kn.prerank_k, kn.retrieve_k)
    V = np.full((n, K), -1, np.int64)
    S = np.full((n, K), -np.inf)
    F = np.zeros((n, K))
    order = np.argsort(sid, kind="stable")
    uniq, starts = np.unique(sid[order], return_index=True)
    ends = np.append(starts[1:], n)
    for q, a, b in zip(uniq, starts, ends, strict=True):
        c = legacy.retrieve(book.strings[int(q)])
        rows = order[a:b]
        k = len(c.vids)
        V[rows, :k], S[rows, :k], F[rows, :k] = c.vids, c.score, c.feedback
    valid = V >= 0
    # truth: the user's grade of every candidate (clicks use it; the heavier stages see it noisily)
    grade = np.zeros((n, K), np.int8)
    rr = np.nonzero(valid)
    grade[valid] = grade_pairs(cat, V[valid], need_t[rr[0]], need_i[rr[0]], need_m[rr[0]])
    # Pre-ranker and ranker are heavier models than retrieval (content understanding, the user's
    # history): each sees the true grade through its own noise, so the stage a candidate reached
    # carries some relevance, as in a real funnel; the bias still comes from what was retrieved.
    def rel(weight: float) -> np.ndarray | float:
        if weight <= 0:
            return 0.0
        return weight * (grade / 3.0 + kn.relevance_noise * rng.standard_normal((n, K)))

    pre = np.where(valid, S + rel(kn.prerank_relevance) + kn.prerank_noise * rng.standard_normal((n, K)), -np.inf)
    pre_order = np.argsort(-pre, axis=1, kind="stable")
    survivors = pre_order[:, :P]
    rank = S + kn.feedback_weight * F + rel(kn.rank_relevance) + kn.rank_noise * rng.standard_normal((n, K))
    rank_s = np.take_along_axis(np.where(valid, rank, -np.inf), survivors, axis=1)
    final = np.concatenate(
        [np.take_along_axis(survivors, np.argsort(-rank_s, axis=1, kind="stable"), axis=1), pre_order[:, P:]], axis=1
    )  # column indices into V, in position order
    n_valid = valid.sum(axis=1)
    if kn.exploration > 0:  # swap some exposed slots with random other candidates
        swap = (rng.random((n, E)) < kn.exploration) & (n_valid[:, None] > E)
        for r, p in zip(*np.nonzero(swap), strict=True):
            j = E + int(rng.random() * (n_valid[r] - E))
            final[r, p], final[r, j] = final[r, j], final[r, p]
    vid = np.take_along_axis(V, final, axis=1)
    grade = np.take_along_axis(grade, final, axis=1)
    pos = np.broadcast_to(np.arange(K), (n, K))
    stage = np.where(pos < E, 2, np.where(pos < P, 1, 0)).astype(np.int8)
    ok = vid >= 0
    # clicks: position bias × the user's own grade of the video (not the query's)
    ev = vid[:, :E]
    okE = ev >= 0
    examine = rng.random((n, E)) < (1.0 + np.arange(E)) ** -ck.position_decay
    cp = np.array(ck.click_prob)[grade[:, :E]]
    qual = np.where(okE, np.clip(cat.quality[np.maximum(ev, 0)] ** 0.3, 0.6, 1.4), 0.0)
    click = np.zeros((n, K), bool)
    click[:, :E] = okE & examine & (rng.random((n, E)) < np.minimum(cp * qual, 0.95))
    frac = rng.beta(1.0 + 1.5 * grade, 2.0)
    play = np.where(click, (cat.duration_ms[np.maximum(vid, 0)] * frac).astype(np.int64), 0)
    satisfied = (click & (grade >= ck.satisfied_grade)).any(axis=1)
    ri = np.nonzero(ok)[0]
    out: tuple[Any, ...] = (ri, vid[ok], stage[ok], pos[ok], click[ok], play[ok], grade[ok], satisfied)
    return out


def simulate(
    cat: Catalog, onto: Ontology, users: Users, cfg: WorldConfig, seed: int, *, progress: bool = True
) -> tuple[Logs, QueryBook]:
    q = cfg.queries
    book = QueryBook(onto, QueryKnobs(q.typo_prob, q.slang_prob, q.synonym_query_prob, q.name_query_prob))
    legacy = LegacyStack(cat, cfg.legacy)
    feed = FeedSampler(cat, onto, cfg, seed)
    logs = Logs()
    ck = cfg.clicks
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
        sids, surfaces = zip(
            *[
                book.phrase(
                    int(s.topic[i]), onto.intent_facet[int(s.intent[i])], s.modifier_text[i], int(s.level[i]), u[i]
                )
                for i in range(n_sess)
            ],
            strict=True,
        )
        sess = np.arange(n_sess)
        ts = s.start_ts.copy()
        sid = np.array(sids, np.int64)
        level = s.level.astype(np.int64)
        parent = np.full(n_sess, -1, np.int64)
        surf = list(surfaces)
        day_q: list[np.ndarray] = []
        day_v: list[np.ndarray] = []
        day_c: list[np.ndarray] = []
        for rnd in range(ck.max_reformulations + 1):
            if len(sess) == 0:
                break
            rid = logs.n_requests + np.arange(len(sess))
            if rnd == 0:
                origin = rid
            ri, vid, stage, pos, click, play, grade, sat = _serve(
                legacy, cat, book, cfg, rng, sid, s.topic[sess], s.intent[sess], s.modifier[sess]
            )
            logs.row_req.append(rid[ri])
            logs.row_vid.append(vid)
            logs.row_stage.append(stage)
            logs.row_pos.append(pos.astype(np.int16))
            logs.row_click.append(click)
            logs.row_play.append(play)
            logs.row_grade.append(grade)
            logs.req_session.append(sess + off)
            logs.req_ts.append(ts)
            logs.req_sid.append(sid)
            logs.req_parent.append(parent)
            logs.req_origin.append(origin)
            logs.req_satisfied.append(sat)
            qk = np.array([legacy.qkey(book.strings[int(x)]) for x in sid], np.int64)
            day_q.append(qk[ri])
            day_v.append(vid)
            day_c.append(click)
            logs.n_requests += len(sess)
            bar.update(len(sess))
            # unsatisfied users reformulate toward their intent, within the window
            go = (~sat) & (rng.random(len(sess)) < ck.reformulate_prob)
            if rnd == ck.max_reformulations or not go.any():
                break
            idx = np.flatnonzero(go)
            has_mod = s.modifier[sess[idx]] >= 0
            max_level = np.where(has_mod, 2, 1)
            jump = rng.random(len(idx)) < 0.3
            new_level = np.where(jump, max_level, np.minimum(level[idx] + 1, max_level))
            uu = rng.random((len(idx), 10))
            new_sid, new_surf = [], []
            for j, i in enumerate(idx):
                si = int(sess[i])
                x, sf = book.phrase(
                    int(s.topic[si]),
                    onto.intent_facet[int(s.intent[si])],
                    s.modifier_text[si],
                    int(new_level[j]),
                    uu[j],
                    avoid=surf[i],
                    allow_typo=False,
                )
                new_sid.append(x)
                new_surf.append(sf)
            lo, hi = 5.0, ck.reformulation_window_s - 5.0
            ts = ts[idx] + (rng.uniform(lo, max(hi, lo + 1e-3), len(idx)) * 1000).astype(np.int64)
            sess, sid, level, parent, origin = sess[idx], np.array(new_sid, np.int64), new_level, rid[idx], origin[idx]
            surf = new_surf
        logs.sessions.append(s)
        logs.n_sessions += n_sess
        # the feed: background (interest only) + leaning toward today's search intents
        bg = background_feed(cat, users, feed, cfg, seed, day, round(cfg.rec.per_request * per_day))
        ln = leaning_feed(cat, users, feed, cfg, seed, day, s, off)
        for arrs, sess_col in ((bg, np.full(len(bg[0]), -1, np.int64)), (ln[:5], ln[5])):
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
