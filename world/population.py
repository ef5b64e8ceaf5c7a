"""Users (skewed interests, heavy-tailed activity) and their search sessions (a true need each)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from world.catalog import category_popularity, modifier_ids, topic_popularity
from world.config import WorldConfig
from world.ontology import Ontology
from world.seeding import stream

DAY_MS = 86_400_000


@dataclass
class Users:
    activity: np.ndarray  # relative activity (Pareto)
    interests: np.ndarray  # (n_users, n_categories) rows sum to 1

    def __len__(self) -> int:
        return len(self.activity)

    @property
    def ids(self) -> list[str]:
        w = max(5, len(str(len(self))))
        return [f"u{i:0{w}d}" for i in range(len(self))]


def make_users(onto: Ontology, cfg: WorldConfig, seed: int) -> Users:
    """Interests: Dirichlet around the global category popularity (small concentration = skewed)."""
    rng = stream(seed, "users")
    k = cfg.users
    glob = category_popularity(onto, seed, k.category_zipf)
    alpha = np.maximum(glob * len(glob) * k.interest_concentration, 1e-3)
    interests = rng.dirichlet(alpha, size=k.n_users)
    activity = rng.pareto(k.activity_pareto, size=k.n_users) + 1.0
    return Users(activity=activity / activity.sum(), interests=interests)


@dataclass
class Sessions:
    """One row per search session, sorted by start time; its need is the user's true intent."""

    user: np.ndarray
    start_ts: np.ndarray  # ms
    topic: np.ndarray
    intent: np.ndarray
    modifier: np.ndarray  # global modifier id or -1
    modifier_text: list[str | None]
    level: np.ndarray  # 0 head, 1 torso, 2 tail: how specifically the first query is phrased
    topic_switch: np.ndarray  # bool: a quick follow-up of the user's previous session (noise for P1)

    def __len__(self) -> int:
        return len(self.user)


def make_sessions(
    onto: Ontology, users: Users, cfg: WorldConfig, seed: int, day: int, n: int, *, stream_name: str | None = None
) -> Sessions:
    """``n`` sessions on ``day`` (own random stream per day, so days are independent; ``stream_name``
    names another stream of the same world, e.g. for sessions served online)."""
    rng = stream(seed, stream_name or f"sessions-{day}")
    topic_pop = topic_popularity(onto, seed, cfg.users.topic_concentration)
    user = rng.choice(len(users), size=n, p=users.activity)
    # category from the user's interests (inverse-CDF on each row), topic by popularity within it
    cum = np.cumsum(users.interests[user], axis=1)
    cat = np.minimum((cum < rng.random((n, 1)) * cum[:, -1:]).sum(axis=1), cum.shape[1] - 1)
    topic = np.empty(n, np.int32)
    for c in np.unique(cat):
        rows = np.flatnonzero(cat == c)
        cand = np.flatnonzero(onto.topic_category == c)
        p = topic_pop[cand] / topic_pop[cand].sum()
        topic[rows] = rng.choice(cand, size=len(rows), p=p)
    u = rng.random((n, 4))
    intent = np.empty(n, np.int32)
    modifier = np.full(n, -1, np.int32)
    mod_text: list[str | None] = []
    mods = modifier_ids(onto)
    for i in range(n):
        t = onto.topics[int(topic[i])]
        facets = onto.categories[onto.topic_category[t.topic_id]].facets
        facet = facets[int(u[i, 0] * len(facets)) % len(facets)]
        intent[i] = onto.intent_of[(t.topic_id, facet)]
        if u[i, 1] < cfg.queries.need_modifier_prob:
            m = t.modifiers[int(u[i, 2] * len(t.modifiers)) % len(t.modifiers)]
            modifier[i] = mods[(t.topic_id, m)]
            mod_text.append(m)
        else:
            mod_text.append(None)
    q = cfg.queries
    r = rng.random(n)
    level = np.where(r < q.head_share, 0, np.where(r < 1.0 - q.tail_share, 1, 2)).astype(np.int8)
    level = np.where((level == 2) & (modifier < 0), 1, level).astype(np.int8)
    # diurnal: more sessions in the evening (a smooth bump), never outside the day
    hours = np.clip(rng.normal(19.0, 5.0, n) % 24.0, 0.0, 23.999)
    start = cfg.start_ts_ms + day * DAY_MS + (hours * 3_600_000).astype(np.int64)
    switch = rng.random(n) < cfg.clicks.topic_switch_prob
    # a topic switch is the same user searching something else shortly after another session
    # (within the reformulation window: noise that a P1 miner must live with)
    order = np.argsort(start, kind="stable")
    user, start, switch = user[order], start[order], switch[order]
    topic, intent, modifier, level = topic[order], intent[order], modifier[order], level[order]
    mod_text = [mod_text[j] for j in order]
    host = np.flatnonzero(switch[1:]) + 1
    user[host] = user[host - 1]
    gap_s = cfg.clicks.reformulation_window_s
    start[host] = start[host - 1] + (rng.uniform(0.1, 0.9, len(host)) * gap_s * 1000).astype(np.int64)
    order = np.argsort(start, kind="stable")
    return Sessions(
        user=user[order],
        start_ts=start[order],
        topic=topic[order],
        intent=intent[order],
        modifier=modifier[order],
        modifier_text=[mod_text[j] for j in order],
        level=level[order],
        topic_switch=switch[order],
    )
