"""Graded relevance (0..3) from intents — never from any encoder's similarity.

A *need* is what a query (or a user) asks for: a topic, optionally an intent (topic × facet), and
optionally a modifier. Grades, for one sense ``t`` of a need:

- topic-level need (head query):   3 primary topic = t; 2 secondary topic = t.
- intent-level (torso):            3 primary intent; 2 secondary intent; 1 same primary topic.
- intent + modifier (tail):        3 primary intent with the modifier; 2 primary intent without it,
                                   or same topic with the modifier; 1 same topic or secondary intent.

A query's grade is the max over its senses (an ambiguous head query is relevant to every sense).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from world.catalog import Catalog


def grade_pairs(
    cat: Catalog, vids: np.ndarray, topic: np.ndarray, intent: np.ndarray, modifier: np.ndarray
) -> np.ndarray:
    """Grade of video ``vids[i]`` for the need (topic[i], intent[i] or -1, modifier[i] or -1)."""
    pt, pi = cat.p_topic[vids], cat.p_intent[vids]
    st, si, vm = cat.s_topic[vids], cat.s_intent[vids], cat.modifier[vids]
    same_topic = pt == topic
    same_intent = (pi == intent) & (intent >= 0)
    sec_intent = (si == intent) & (intent >= 0)
    mod_ok = (vm == modifier) & (modifier >= 0)
    head = np.where(same_topic, 3, np.where(st == topic, 2, 0))
    torso = np.where(same_intent, 3, np.where(sec_intent, 2, np.where(same_topic, 1, 0)))
    tail = np.where(
        same_intent & mod_ok,
        3,
        np.where(same_intent | (same_topic & mod_ok), 2, np.where(same_topic | sec_intent, 1, 0)),
    )
    g = np.where(intent < 0, head, np.where(modifier < 0, torso, tail))
    return g.astype(np.int8)


@dataclass
class VideoIndex:
    """Inverted lists of the catalog by primary/secondary topic (to grade only plausible videos)."""

    by_topic: dict[int, np.ndarray]

    @classmethod
    def build(cls, cat: Catalog) -> VideoIndex:
        topics = np.concatenate([cat.p_topic, cat.s_topic])
        vids = np.concatenate([np.arange(len(cat)), np.arange(len(cat))])
        keep = topics >= 0
        topics, vids = topics[keep], vids[keep]
        order = np.argsort(topics, kind="stable")
        topics, vids = topics[order], vids[order]
        uniq, starts = np.unique(topics, return_index=True)
        ends = np.append(starts[1:], len(topics))
        return cls({int(t): np.unique(vids[s:e]) for t, s, e in zip(uniq, starts, ends, strict=True)})

    def candidates(self, topics: list[int]) -> np.ndarray:
        parts = [self.by_topic.get(t, np.empty(0, np.int64)) for t in topics]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def grade_need(cat: Catalog, index: VideoIndex, senses: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(video indices, grades > 0) for a need given as senses [(topic, intent|-1, modifier|-1)]."""
    vids = index.candidates([s[0] for s in senses])
    if len(vids) == 0:
        return vids, np.empty(0, np.int8)
    best = np.zeros(len(vids), np.int8)
    for t, i, m in senses:
        n = len(vids)
        g = grade_pairs(cat, vids, np.full(n, t), np.full(n, i), np.full(n, m))
        best = np.maximum(best, g)
    keep = best > 0
    return vids[keep], best[keep]


def grade_described(
    need_topics: set[int],
    need_intents: set[int],
    need_facet: str | None,
    need_modifier: str | None,
    topic: int,
    intent: int,
    modifier: str | None,
) -> int:
    """Grade of a described video (one topic, one intent, a modifier or none; no secondary topic)
    for a query's need, by the rules above: a head need (no facet) asks for the topic, a torso need
    for the intent, a tail need for the intent with its modifier."""
    same_topic, same_intent = topic in need_topics, intent in need_intents
    if need_facet is None and need_modifier is None:
        return 3 if same_topic else 0
    if need_modifier is None:
        return 3 if same_intent else (1 if same_topic else 0)
    mod_ok = modifier == need_modifier
    if same_intent and mod_ok:
        return 3
    if same_intent or (same_topic and mod_ok):
        return 2
    return 1 if same_topic else 0
