"""``SimulatedLLM``: a SIMULATION of an LLM as the offline P3 knowledge source (no model, no network).

Given a query and one relevant video, a real LLM would write descriptions of *other* videos that
fit the query, drawing on world knowledge: for "transformer" it knows both the power transformer
and the neural network, even when the logs only ever showed one. This stand-in does the same from
the world's ontology (its knowledge of topics, their names and vocabulary): it reads the query's
words (snapping typos to known words, as an LLM reads through them), finds the topics those words
can name, and writes each description for one of them (half of them the example's sense, half any
sense) in fresh words; with probability ``error_rate`` it hallucinates a plausible but wrong topic.
It never reads the world's truth tables, so a query it cannot read is a query it gets wrong.
Deterministic for (seed, query, example, n).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import CropsError, ErrorKind
from core.normalize import normalize_text
from world.ontology import Ontology
from world.textgen import TextKnobs, video_text

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Generated:
    text: str
    topic_id: int
    intent_id: int
    is_error: bool  # True = hallucinated: fits none of the senses the LLM read in the query
    modifier: str | None = None


class SimulatedLLM:
    """Offline stand-in for an LLM knowledge source (see module docstring). Not a language model."""

    model = "simulated-llm-v1"
    prompt_version = "world-ontology-2"  # 2: each description says what it is about

    def __init__(self, world_dir: Path, *, error_rate: float = 0.15, seed: int = 0) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise CropsError(ErrorKind.INVALID_INPUT, f"error_rate must be in [0, 1], got {error_rate}")
        self.world_dir = Path(world_dir)
        self.error_rate = error_rate
        self.seed = seed
        if not self.world_dir.is_dir():
            raise CropsError(ErrorKind.NOT_FOUND, f"world {world_dir} does not exist")
        from world.evaluation import world_ontology

        self.onto: Ontology = world_ontology(self.world_dir)
        self._read: dict[str, tuple[list[int], str | None, str | None]] = {}
        self._knobs = TextKnobs(synonym_text_prob=0.5, clickbait_prob=0.0, noise_tag_prob=0.0, spam_tag_prob=0.0)

    # ------------------------------------------------------------------ understanding the query
    def interpret(self, query: str) -> tuple[list[int], str | None, str | None]:
        """(sense topics, facet, modifier), read from the query's words (cached per string)."""
        got = self._read.get(query)
        if got is None:
            got = self._read[query] = self._interpret(query)
        return got

    def _interpret(self, query: str) -> tuple[list[int], str | None, str | None]:
        q = self._spellfix(normalize_text(query))
        surfaces = sorted(
            (s for s in self.onto.surface_topics if re.search(rf"\b{re.escape(s)}\b", q)), key=len, reverse=True
        )
        topics = list(self.onto.surface_topics[surfaces[0]]) if surfaces else []
        if not topics:  # no name: the topics whose vocabulary the query uses
            words = set(_WORD.findall(q))
            scores = [
                (sum(w in words for p in t.vocab for w in _WORD.findall(p)), t.topic_id) for t in self.onto.topics
            ]
            best = max(scores)[0] if scores else 0
            topics = [t for s, t in scores if s == best and s > 0]
        facet = next((f.name for f in self.onto.facets.values() if any(w in q for w in f.words)), None)
        if facet is not None:  # "python tutorial" means the language: the snake has no tutorials
            with_facet = [t for t in topics if (t, facet) in self.onto.intent_of]
            topics = with_facet or topics
        mod = next((m for t in topics for m in self.onto.topics[t].modifiers if m in q), None)
        return topics, facet, mod

    def _spellfix(self, q: str) -> str:
        """An LLM reads through typos: snap unknown words to the closest ontology word."""
        import difflib

        if not hasattr(self, "_lexicon"):
            words: set[str] = set()
            for t in self.onto.topics:
                for p in (t.head, *t.names, *t.synonyms, *t.vocab, *t.modifiers):
                    words.update(_WORD.findall(p))
            for f in self.onto.facets.values():
                for p in (*f.words, *f.slang):
                    words.update(_WORD.findall(p))
            self._lexicon = sorted(words)
            self._lexset = set(words)
        out = []
        for w in q.split():
            if len(w) >= 4 and w not in self._lexset:
                close = difflib.get_close_matches(w, self._lexicon, n=1, cutoff=0.75)
                w = close[0] if close else w
            out.append(w)
        return " ".join(out)

    def _closest(self, topics: list[int], text: str) -> int:
        words = set(_WORD.findall(normalize_text(text)))

        def score(t: int) -> int:
            tp = self.onto.topics[t]
            return sum(w in words for p in (*tp.names, *tp.vocab, *tp.synonyms) for w in _WORD.findall(p))

        return max(topics, key=score)

    # ------------------------------------------------------------------ generation
    def generate_labeled(self, query: str, example_text: str, n: int) -> list[Generated]:
        """Like ``generate`` but says which topic each description is about and whether it is wrong."""
        if n < 0:
            raise CropsError(ErrorKind.INVALID_INPUT, f"n must be >= 0, got {n}")
        key = [self.seed, zlib.crc32(query.encode()), zlib.crc32(example_text.encode()), n]
        rng = np.random.default_rng(key)
        topics, facet, mod = self.interpret(query)
        onto = self.onto
        example = self._closest(topics, example_text) if topics else -1
        out: list[Generated] = []
        for _ in range(n):
            u = rng.random(24)
            wrong = not topics or u[0] < self.error_rate
            if wrong:
                pool = [t.topic_id for t in onto.topics if t.topic_id not in topics]
                if topics and u[1] < 0.5:  # plausible: a neighbour of a true sense
                    cat = onto.topic_category[topics[0]]
                    near = [t for t in pool if onto.topic_category[t] == cat]
                    pool = near or pool
                t = pool[int(u[2] * len(pool)) % len(pool)]
            else:
                t = example if u[1] < 0.5 and example >= 0 else topics[int(u[2] * len(topics)) % len(topics)]
            tp = onto.topics[t]
            facets = onto.categories[onto.topic_category[t]].facets
            f: str = facets[int(u[3] * len(facets)) % len(facets)]
            if facet is not None and facet in facets and not wrong:
                f = facet
            m: str | None = None
            if mod is not None and mod in tp.modifiers:
                m = mod
            elif u[4] < 0.4:
                m = tp.modifiers[int(u[5] * len(tp.modifiers)) % len(tp.modifiers)]
            title, caption, tags = video_text(onto, tp, f, m, None, u[8:24], self._knobs)
            text = " ".join(x for x in (title, caption, " ".join(tags)) if x)
            out.append(Generated(text, int(t), onto.intent_of[(t, f)], bool(wrong), m))
        return out

    def generate(self, query: str, example_text: str, n: int) -> list[str]:
        """``n`` descriptions of videos that fit the query's intents (some wrong at ``error_rate``)."""
        return [g.text for g in self.generate_labeled(query, example_text, n)]
