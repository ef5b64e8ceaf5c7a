"""The world's latent structure: categories → topics → intents (topic × facet), plus modifiers.

Parsed from ``vocabulary.txt`` (embedded, no external data). An *intent* is what a video is about
and what a user wants: a topic (e.g. the neural-network transformer) seen through a facet (e.g.
"explained"). A *head term* shared by topics of different categories ("transformer": power /
neural network / toys) is what makes a query ambiguous; nothing here says which sense wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.txt")


@dataclass(frozen=True)
class Facet:
    name: str
    words: tuple[str, ...]  # how a query names the facet ("tutorial", "how to")
    slang: tuple[str, ...]
    templates: tuple[str, ...]  # video title templates with {name} {Name} {mod}


@dataclass(frozen=True)
class Category:
    name: str
    facets: tuple[str, ...]
    words: tuple[str, ...]


@dataclass(frozen=True)
class Topic:
    topic_id: int
    key: str
    category: str
    head: str  # the shortest query for the topic; may be shared across categories (ambiguity)
    names: tuple[str, ...]  # surface names (may contain the head term)
    synonyms: tuple[str, ...]  # descriptions without the head term: findable only by meaning
    vocab: tuple[str, ...]
    modifiers: tuple[str, ...]  # what makes a tail query specific


@dataclass
class Ontology:
    facets: dict[str, Facet]
    categories: list[Category]
    topics: list[Topic]
    # intents: row i = (topic_id, facet name)
    intent_topic: np.ndarray = field(init=False)
    intent_facet: list[str] = field(init=False)
    intent_of: dict[tuple[int, str], int] = field(init=False)
    topic_category: np.ndarray = field(init=False)
    category_index: dict[str, int] = field(init=False)
    surface_topics: dict[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.category_index = {c.name: i for i, c in enumerate(self.categories)}
        self.topic_category = np.array([self.category_index[t.category] for t in self.topics], dtype=np.int32)
        cat_facets = {c.name: c.facets for c in self.categories}
        it: list[int] = []
        self.intent_facet = []
        self.intent_of = {}
        for t in self.topics:
            for f in cat_facets[t.category]:
                self.intent_of[(t.topic_id, f)] = len(it)
                it.append(t.topic_id)
                self.intent_facet.append(f)
        self.intent_topic = np.array(it, dtype=np.int32)
        surf: dict[str, list[int]] = {}
        for t in self.topics:
            for s in {t.head, *t.names, *t.synonyms}:
                surf.setdefault(s, []).append(t.topic_id)
        self.surface_topics = {s: tuple(sorted(v)) for s, v in surf.items()}

    @property
    def n_intents(self) -> int:
        return len(self.intent_facet)

    def senses(self, surface: str, facet: str | None = None, modifier: str | None = None) -> tuple[int, ...]:
        """Topics a query made of ``surface`` (+ facet words, + modifier) can mean."""
        out = []
        for t in self.surface_topics.get(surface, ()):
            topic = self.topics[t]
            if facet is not None and (t, facet) not in self.intent_of:
                continue
            if modifier is not None and modifier not in topic.modifiers:
                continue
            out.append(t)
        return tuple(out)

    def ambiguous_heads(self) -> list[str]:
        """Head terms whose topics live in more than one category."""
        out = []
        for s, ts in self.surface_topics.items():
            if len({self.topics[t].category for t in ts}) > 1:
                out.append(s)
        return sorted(out)


def _split(s: str, sep: str = ";") -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(sep) if x.strip())


def parse_vocabulary(text: str) -> Ontology:
    facets: dict[str, Facet] = {}
    categories: list[Category] = []
    topics: list[Topic] = []
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, rest = line.partition(" ")
        parts = [p.strip() for p in rest.split("|")]
        if kind == "FACET" and len(parts) == 4:
            facets[parts[0]] = Facet(parts[0], _split(parts[1]), _split(parts[2]), _split(parts[3]))
        elif kind == "CATEGORY" and len(parts) == 3:
            current = parts[0]
            categories.append(Category(parts[0], _split(parts[1]), _split(parts[2])))
        elif kind == "TOPIC" and len(parts) == 6 and current is not None:
            topics.append(
                Topic(
                    len(topics),
                    parts[0],
                    current,
                    parts[1],
                    _split(parts[2]),
                    _split(parts[3]),
                    _split(parts[4]),
                    _split(parts[5]),
                )
            )
        else:
            raise ValueError(f"vocabulary line {lineno} is malformed: {line[:60]}")
    for c in categories:
        missing = [f for f in c.facets if f not in facets]
        if missing:
            raise ValueError(f"category {c.name} names unknown facets {missing}")
    return Ontology(facets, categories, topics)


@lru_cache(maxsize=4)
def load_ontology(path: str | None = None) -> Ontology:
    """The embedded ontology (or one parsed from another vocabulary file of the same format)."""
    p = Path(path) if path else VOCABULARY_FILE
    return parse_vocabulary(p.read_text(encoding="utf-8"))
