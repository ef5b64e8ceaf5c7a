"""The platform's mechanisms, shared by the logged simulation and the session-step API.

One code path: ``rank_expose_click`` (pre-rank → rank → expose → examine → click → play) takes the
candidates of *any* retriever, ``follow_ups`` decides who reformulates and how, and the feed
functions draw the recommender's items. Every random draw goes through ``Draws``: one generator for
a whole batch (the logged simulation, a day at a time) or one generator per row (the online API,
one stream per session, so a session's outcome does not depend on which other sessions ran beside
it or in what order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from world.catalog import Catalog, topic_popularity
from world.config import WorldConfig
from world.legacy import LegacyStack
from world.ontology import Ontology
from world.population import DAY_MS, Sessions, Users
from world.queries import QueryBook
from world.relevance import grade_pairs
from world.seeding import stream

STAGES = ("prerank_filtered", "rank_unexposed", "exposed")
ACTIONS = ("view", "like", "share", "comment", "skip")


class Draws:
    """Random draws for ``n`` rows: from one generator (batch order) or one generator per row.

    With one generator every call draws the whole batch at once (the logged simulation's order).
    With a list, row ``i`` draws from ``gens[i]`` (several rows may share a generator: the items of
    one session), so each row's numbers depend only on its own stream.
    """

    def __init__(self, gen: np.random.Generator | Sequence[np.random.Generator], n: int | None = None) -> None:
        self.gen = gen
        if isinstance(gen, np.random.Generator):
            if n is None:
                raise ValueError("n is required with a single generator")
            self.n = n
        else:
            self.n = len(gen)

    @property
    def batched(self) -> bool:
        return isinstance(self.gen, np.random.Generator)

    def take(self, idx: np.ndarray) -> Draws:
        """The draws of rows ``idx`` (in that order)."""
        if isinstance(self.gen, np.random.Generator):
            return Draws(self.gen, len(idx))
        return Draws([self.gen[int(i)] for i in idx])

    def _rows(self, fn: Any, shape: tuple[int, ...]) -> np.ndarray:
        if isinstance(self.gen, np.random.Generator):
            out: np.ndarray = fn(self.gen, (self.n, *shape))
            return out
        if self.n == 0:
            return np.asarray(fn(np.random.default_rng(0), (0, *shape)))
        return np.stack([np.asarray(fn(g, shape)) for g in self.gen])

    def random(self, *shape: int) -> np.ndarray:
        return self._rows(lambda g, s: g.random(s), shape)

    def normal(self, *shape: int) -> np.ndarray:
        return self._rows(lambda g, s: g.standard_normal(s), shape)

    def uniform(self, lo: float, hi: float) -> np.ndarray:
        return self._rows(lambda g, s: g.uniform(lo, hi, s), ())

    def poisson(self, lam: float) -> np.ndarray:
        return self._rows(lambda g, s: g.poisson(lam, s), ())

    def beta(self, a: np.ndarray, b: float) -> np.ndarray:
        """Beta(a[i, ...], b) for each row (``a`` has the rows as its first axis)."""
        if isinstance(self.gen, np.random.Generator):
            out: np.ndarray = self.gen.beta(a, b)
            return out
        return np.stack([g.beta(a[i], b) for i, g in enumerate(self.gen)]) if self.n else np.zeros(a.shape)

    def scalar(self, row: int) -> float:
        g = self.gen if isinstance(self.gen, np.random.Generator) else self.gen[row]
        return float(g.random())


# ---------------------------------------------------------------------------------------------- search


@dataclass
class Served:
    """What the funnel did with a batch of requests: one entry per (request, candidate) row."""

    row: np.ndarray  # request index within the batch
    vid: np.ndarray  # catalog index
    stage: np.ndarray  # index into STAGES
    pos: np.ndarray  # position in the final order (exposed: < expose_k)
    click: np.ndarray
    play: np.ndarray  # ms
    grade: np.ndarray  # truth: the user's grade of the video (0..3)
    satisfied: np.ndarray  # per request: a click at grade ≥ satisfied_grade


def candidate_matrix(cands: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Stack per-request candidate lists (catalog indices, best first; -1 = none) into (n, k)."""
    V = np.full((len(cands), k), -1, np.int64)
    for r, c in enumerate(cands):
        c = np.asarray(c, np.int64)[:k]
        V[r, : len(c)] = c
    return V


def rank_expose_click(
    legacy: LegacyStack,
    cat: Catalog,
    cfg: WorldConfig,
    texts: Sequence[str],
    V: np.ndarray,
    need_t: np.ndarray,
    need_i: np.ndarray,
    need_m: np.ndarray,
    draws: Draws,
    book: QueryBook | None = None,
) -> Served:
    """The world's ranking stage and its users, for any retriever's candidates ``V`` (n, K).

    The pre-ranker and ranker are the legacy stack's (only retrieval differs between arms): they
    score every candidate with the legacy features of that (query, video) pair, whoever retrieved
    it. The top ``expose_k`` are shown; users examine by position and click by their own grade.
    """
    kn, ck = cfg.legacy, cfg.clicks
    n, K = V.shape
    P, E = min(kn.prerank_k, K), min(kn.expose_k, kn.prerank_k, K)
    valid = V >= 0
    S = np.full((n, K), -np.inf)
    F = np.zeros((n, K))
    groups: dict[str, list[int]] = {}
    for r, t in enumerate(texts):
        groups.setdefault(t, []).append(r)
    for t, rows_l in groups.items():
        rows = np.array(rows_l)
        m = valid[rows]
        if not m.any():
            continue
        s, f = legacy.features(t, V[rows][m])
        Sr, Fr = S[rows], F[rows]
        Sr[m], Fr[m] = s, f
        S[rows], F[rows] = Sr, Fr
    # truth: the user's grade of every candidate (clicks use it; the heavier stages see it noisily)
    grade = np.zeros((n, K), np.int8)
    rr = np.nonzero(valid)
    grade[valid] = grade_pairs(cat, V[valid], need_t[rr[0]], need_i[rr[0]], need_m[rr[0]])

    # Pre-ranker and ranker are heavier models than retrieval: besides the legacy features (text
    # match, popularity, query → category prior, click history) each has a learned relevance model,
    # seen through its own noise. Such a model reads the query text and the video, so it estimates
    # the video's grade for the query (any of its senses), not for the sense this user means.
    seen = grade if kn.relevance_view == "user" else query_grades(cat, book, texts, V)

    def rel(weight: float) -> np.ndarray | float:
        if weight <= 0:
            return 0.0
        return weight * (seen / 3.0 + kn.relevance_noise * draws.normal(K))

    pre = np.where(valid, S + rel(kn.prerank_relevance) + kn.prerank_noise * draws.normal(K), -np.inf)
    pre_order = np.argsort(-pre, axis=1, kind="stable")
    survivors = pre_order[:, :P]
    rank = S + kn.feedback_weight * F + rel(kn.rank_relevance) + kn.rank_noise * draws.normal(K)
    rank_s = np.take_along_axis(np.where(valid, rank, -np.inf), survivors, axis=1)
    final = np.concatenate(
        [np.take_along_axis(survivors, np.argsort(-rank_s, axis=1, kind="stable"), axis=1), pre_order[:, P:]], axis=1
    )  # column indices into V, in position order
    n_valid = valid.sum(axis=1)
    if kn.exploration > 0:  # swap some exposed slots with random other candidates
        swap = (draws.random(E) < kn.exploration) & (n_valid[:, None] > E)
        for r, p in zip(*np.nonzero(swap), strict=True):
            j = E + int(draws.scalar(int(r)) * (n_valid[r] - E))
            final[r, p], final[r, j] = final[r, j], final[r, p]
    vid = np.take_along_axis(V, final, axis=1)
    grade = np.take_along_axis(grade, final, axis=1)
    pos = np.broadcast_to(np.arange(K), (n, K))
    stage = np.where(pos < E, 2, np.where(pos < P, 1, 0)).astype(np.int8)
    ok = vid >= 0
    # clicks: position bias × the user's own grade of the video (not the query's)
    ev = vid[:, :E]
    okE = ev >= 0
    examine = draws.random(E) < (1.0 + np.arange(E)) ** -ck.position_decay
    cp = np.array(ck.click_prob)[grade[:, :E]]
    qual = np.where(okE, np.clip(cat.quality[np.maximum(ev, 0)] ** 0.3, 0.6, 1.4), 0.0)
    click = np.zeros((n, K), bool)
    click[:, :E] = okE & examine & (draws.random(E) < np.minimum(cp * qual, 0.95))
    frac = draws.beta(1.0 + 1.5 * grade, 2.0)
    play = np.where(click, (cat.duration_ms[np.maximum(vid, 0)] * frac).astype(np.int64), 0)
    satisfied: np.ndarray = np.asarray((click & (grade >= ck.satisfied_grade)).any(axis=1))
    ri = np.nonzero(ok)[0]
    return Served(ri, vid[ok], stage[ok], pos[ok], click[ok], play[ok], grade[ok], satisfied)


def query_grades(cat: Catalog, book: QueryBook | None, texts: Sequence[str], V: np.ndarray) -> np.ndarray:
    """Grade of each candidate for the query text: the max over the senses the query's words can mean
    (0 for a string the query book does not know)."""
    if book is None:
        raise ValueError("relevance_view 'query' needs the query book")
    out = np.zeros(V.shape, np.int8)
    groups: dict[str, list[int]] = {}
    for r, t in enumerate(texts):
        groups.setdefault(t, []).append(r)
    for t, rows_l in groups.items():
        sid = book.string_index.get(t)
        if sid is None:
            continue
        rows = np.array(rows_l)
        sub = V[rows]
        m = sub >= 0
        vids = sub[m]
        best = np.zeros(len(vids), np.int8)
        n = len(vids)
        for topic, intent, mod in book.string_senses(sid):
            g = grade_pairs(cat, vids, np.full(n, topic), np.full(n, intent), np.full(n, mod))
            best = np.maximum(best, g)
        blk = out[rows]
        blk[m] = best
        out[rows] = blk
    return out


@dataclass
class FollowUps:
    """The reformulations of a batch: which requests get one, and the new queries."""

    idx: np.ndarray  # request indices (within the batch) that reformulate
    sid: np.ndarray  # query-book string ids of the follow-ups
    surface: list[str]
    level: np.ndarray
    ts: np.ndarray


def follow_ups(
    book: QueryBook,
    onto: Ontology,
    cfg: WorldConfig,
    draws: Draws,
    s: Sessions,
    sess: np.ndarray,
    level: np.ndarray,
    surf: Sequence[str],
    ts: np.ndarray,
    satisfied: np.ndarray,
) -> FollowUps:
    """Unsatisfied users reformulate toward their need (more specific, in other words, no typo) within
    the reformulation window. ``sess`` indexes ``s`` for each request of the batch."""
    ck = cfg.clicks
    go = (~satisfied) & (draws.random() < ck.reformulate_prob)
    idx = np.flatnonzero(go)
    if len(idx) == 0:
        return FollowUps(idx, np.empty(0, np.int64), [], np.empty(0, np.int64), np.empty(0, np.int64))
    d = draws.take(idx)
    has_mod = s.modifier[sess[idx]] >= 0
    max_level = np.where(has_mod, 2, 1)
    jump = d.random() < 0.3
    new_level = np.where(jump, max_level, np.minimum(level[idx] + 1, max_level))
    uu = d.random(10)
    new_sid, new_surf = [], []
    for j, i in enumerate(idx):
        si = int(sess[i])
        x, sf = book.phrase(
            int(s.topic[si]),
            onto.intent_facet[int(s.intent[si])],
            s.modifier_text[si],
            int(new_level[j]),
            uu[j],
            avoid=surf[int(i)],
            allow_typo=False,
        )
        new_sid.append(x)
        new_surf.append(sf)
    lo, hi = 5.0, ck.reformulation_window_s - 5.0
    new_ts = ts[idx] + (d.uniform(lo, max(hi, lo + 1e-3)) * 1000).astype(np.int64)
    return FollowUps(idx, np.array(new_sid, np.int64), new_surf, new_level.astype(np.int64), new_ts)


def phrase_first(
    book: QueryBook, onto: Ontology, s: Sessions, rows: np.ndarray, u: np.ndarray
) -> tuple[list[int], list[str]]:
    """The first query of sessions ``rows`` (``u``: 10 uniforms per row): (string ids, surfaces)."""
    sids, surfaces = [], []
    for j, i in enumerate(rows):
        x, sf = book.phrase(
            int(s.topic[i]), onto.intent_facet[int(s.intent[i])], s.modifier_text[i], int(s.level[i]), u[j]
        )
        sids.append(x)
        surfaces.append(sf)
    return sids, surfaces


# ---------------------------------------------------------------------------------------------- feed


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


def feed_actions(draws: Draws, skip_prob: float, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a viewer does with each feed item (view / like / share / comment / skip) and for how long."""
    r = draws.random()
    act = np.where(r < skip_prob, 4, np.searchsorted(np.array([0.75, 0.9, 0.95, 1.0]), draws.random()))
    frac = np.where(act == 4, draws.uniform(0.02, 0.15), _beta_const(draws, 2.5, 1.5))
    return act.astype(np.int8), (dur * frac).astype(np.int64)


def _beta_const(draws: Draws, a: float, b: float) -> np.ndarray:
    return draws._rows(lambda g, s: g.beta(a, b, s), ())


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
    act, play = feed_actions(Draws(rng, len(vid)), 0.3, cat.duration_ms[vid])
    return user, ts, vid, act, play


def leaning_feed(
    cat: Catalog, users: Users, feed: FeedSampler, cfg: WorldConfig, s: Sessions, draws: Draws
) -> tuple[np.ndarray, ...]:
    """Around a search, the feed leans toward the session's intent (strength = lean_prob/count).

    Returns (user, ts, video, action, play_ms, session row) per feed item, the session row indexing
    ``s``."""
    k = cfg.rec
    lean = draws.random() < k.lean_prob
    counts = np.where(lean, draws.poisson(k.lean_count), 0)
    idx = np.repeat(np.arange(len(s)), counts)
    d = draws.take(idx)
    n = len(idx)
    # mostly after the search (the feed reacts to it), some before (interest was already there)
    ts = s.start_ts[idx] + (d.uniform(-0.3, 1.0) * k.lean_window_s * 1000).astype(np.int64)
    u = d.random(4)
    noise = u[:, 0] < k.lean_noise
    by_intent = (~noise) & (u[:, 1] < 1.0 - k.lean_topic_share)
    by_topic = (~noise) & ~by_intent
    vid = np.full(n, -1, np.int64)
    vid[by_intent] = feed.sample(feed.by_intent, s.intent[idx[by_intent]], ts[by_intent], u[by_intent, 3])
    vid[by_topic] = feed.sample(feed.by_topic, s.topic[idx[by_topic]], ts[by_topic], u[by_topic, 3])
    if noise.any():
        t = feed.interest_topics(users.interests[s.user[idx[noise]]], u[noise, 1], u[noise, 2])
        vid[noise] = feed.sample(feed.by_topic, t, ts[noise], u[noise, 3])
    ok = vid >= 0
    idx, ts, vid = idx[ok], ts[ok], vid[ok]
    act, play = feed_actions(d.take(np.flatnonzero(ok)), 0.1, cat.duration_ms[vid])
    return s.user[idx], ts, vid, act, play, idx
