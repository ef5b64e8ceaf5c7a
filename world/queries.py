"""Queries: needs phrased at three levels of specificity, and what each phrasing means.

A query's meaning (its *key*) is (surface, facet, modifier): the topic name used, the facet words
(torso and tail) and the modifier (tail). Its senses are every topic that surface can name: "python"
alone means the language and the snake. Typos, slang and word order change the string, not the key.
Query class = specificity: head (topic only), torso (+ facet), tail (+ modifier).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from world.catalog import modifier_ids
from world.ontology import Ontology
from world.textgen import QueryKnobs, phrase_query

LEVELS = ("head", "torso", "tail")


@dataclass
class QueryBook:
    """Every query string the simulation produced, its key(s), and every key's senses."""

    onto: Ontology
    knobs: QueryKnobs
    keys: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    key_index: dict[tuple[str, str | None, str | None], int] = field(default_factory=dict)
    strings: list[str] = field(default_factory=list)
    string_index: dict[str, int] = field(default_factory=dict)
    string_keys: list[set[int]] = field(default_factory=list)
    clean: set[int] = field(default_factory=set)  # strings phrased at least once without a typo
    _mods: dict[tuple[int, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._mods = modifier_ids(self.onto)

    def key_id(self, surface: str, facet: str | None, modifier: str | None) -> int:
        k = (surface, facet, modifier)
        if k not in self.key_index:
            self.key_index[k] = len(self.keys)
            self.keys.append(k)
        return self.key_index[k]

    def string_id(self, text: str, key: int) -> int:
        if text not in self.string_index:
            self.string_index[text] = len(self.strings)
            self.strings.append(text)
            self.string_keys.append(set())
        sid = self.string_index[text]
        self.string_keys[sid].add(key)
        return sid

    def phrase(
        self,
        topic: int,
        facet: str,
        modifier: str | None,
        level: int,
        u: np.ndarray,
        *,
        avoid: str | None = None,
        allow_typo: bool = True,
    ) -> tuple[int, str]:
        """Phrase the need at ``level`` (0 head, 1 torso, 2 tail) → (string id, surface used)."""
        t = self.onto.topics[topic]
        f = facet if level >= 1 else None
        m = modifier if level >= 2 else None
        uu = u.copy()
        if not allow_typo:
            uu[7] = 1.0
        text, surface = phrase_query(self.onto, t, f, m, uu, self.knobs, avoid=avoid)
        sid = self.string_id(text, self.key_id(surface, f, m))
        if uu[7] >= self.knobs.typo_prob:
            self.clean.add(sid)
        else:  # a slip was drawn; a word too short to slip leaves the string clean
            uu[7] = 1.0
            if phrase_query(self.onto, t, f, m, uu, self.knobs, avoid=avoid)[0] == text:
                self.clean.add(sid)
        return sid, surface

    def typo(self, sid: int) -> bool:
        """The string was only ever typed with a slip (a typo string)."""
        return sid not in self.clean

    def senses(self, key: int) -> list[tuple[int, int, int]]:
        """[(topic, intent | -1, modifier id | -1)] for every topic the key can mean."""
        surface, facet, mod = self.keys[key]
        out = []
        for t in self.onto.senses(surface, facet, mod):
            i = self.onto.intent_of[(t, facet)] if facet is not None else -1
            m = self._mods[(t, mod)] if mod is not None else -1
            out.append((t, i, m))
        return out

    def key_level(self, key: int) -> int:
        _, facet, mod = self.keys[key]
        return 0 if facet is None else (2 if mod is not None else 1)

    def string_level(self, sid: int) -> int:
        return min(self.key_level(k) for k in self.string_keys[sid])

    def string_senses(self, sid: int) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        for k in sorted(self.string_keys[sid]):
            out += [s for s in self.senses(k) if s not in out]
        return out

    def ambiguous(self, sid: int) -> bool:
        """More than one sense, in more than one category (power vs neural-network transformer)."""
        cats = {int(self.onto.topic_category[t]) for t, _, _ in self.string_senses(sid)}
        return len(cats) > 1
