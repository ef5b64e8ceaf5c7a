"""Words for the world: video titles, captions and tags from intents; queries from needs.

Every function takes a ``numpy.random.Generator`` so output is a pure function of the seed. Text is
meant to be realistic enough that lexical (BM25) and pretrained dense (MiniLM) retrieval land in the
middle: videos often describe their topic by a synonym that shares no word with the head query,
some titles are clickbait, tags carry noise, and queries carry typos and slang.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from world.ontology import Ontology, Topic

CLICKBAIT = (
    "you won't believe what happened",
    "wait for it",
    "this changed everything",
    "watch till the end",
    "I can't believe this worked",
    "nobody expected this",
    "part 2 is finally here",
    "the ending though",
)
NOISE_TAGS = ("fyp", "viral", "trending", "foryou", "shorts", "new", "2024", "mustwatch")
CAPTION_TEMPLATES = (
    "{v1}, {v2} and {v3}",
    "all about {v1} and {v2}",
    "{v1} {v2} {filler}",
    "today: {v1} with {v2}",
    "{name} with {v1} and {v2}",
    "{v1} vs {v2} {filler}",
    "my take on {v1}",
    "{filler} {v1} {v2}",
)
FILLERS = (
    "follow for more",
    "part 1",
    "like and subscribe",
    "full video on my page",
    "lol",
    "so good",
    "pov",
    "day 3",
    "no way",
    "",
    "",
    "",
)
QUERY_FILLERS = ("2024", "easy", "best", "at home", "video", "new", "for real", "quick")


def _pick(options: tuple[str, ...] | list[str], u: float) -> str:
    return options[min(int(u * len(options)), len(options) - 1)]


def typo(word: str, u: float, v: float) -> str:
    """One keyboard slip: swap two neighbours, drop a letter, or double one (words of ≥ 4 letters)."""
    if len(word) < 4:
        return word
    i = 1 + min(int(v * (len(word) - 2)), len(word) - 3)
    kind = int(u * 3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


@dataclass(frozen=True)
class TextKnobs:
    synonym_text_prob: float = 0.35  # a video names its topic by a synonym (no head term)
    clickbait_prob: float = 0.08  # title says nothing about the topic
    noise_tag_prob: float = 0.5  # add a generic tag (fyp, viral)
    spam_tag_prob: float = 0.03  # add a popular head term of another topic as a tag
    secondary_mention_prob: float = 0.8  # a secondary intent is mentioned in the caption


def video_text(
    onto: Ontology,
    topic: Topic,
    facet: str,
    modifier: str | None,
    secondary: Topic | None,
    u: np.ndarray,
    knobs: TextKnobs,
) -> tuple[str, str, list[str]]:
    """(title, caption, tags) of a video about ``topic`` × ``facet``; ``u`` holds 16 uniforms."""
    f = onto.facets[facet]
    use_syn = u[0] < knobs.synonym_text_prob and topic.synonyms
    name = _pick(topic.synonyms, u[1]) if use_syn else _pick(topic.names, u[1])
    mod = modifier or ""
    if u[2] < knobs.clickbait_prob:
        title = _pick(CLICKBAIT, u[3])
    else:
        tpl = _pick(f.templates, u[3])
        title = tpl.format(name=name, Name=name[:1].upper() + name[1:], mod=mod)
        title = " ".join(title.split())
    vocab = topic.vocab
    k = len(vocab)
    i1, i2, i3 = int(u[4] * k) % k, int(u[5] * k) % k, int(u[6] * k) % k
    caption = _pick(CAPTION_TEMPLATES, u[7]).format(
        v1=vocab[i1], v2=vocab[i2], v3=vocab[i3], filler=_pick(FILLERS, u[8]), name=name
    )
    if use_syn or u[2] < knobs.clickbait_prob:
        # the caption then still says what the video is about, in the video's own words
        caption = f"{caption} | {_pick(topic.synonyms or topic.names, u[9])}"
    if secondary is not None and u[10] < knobs.secondary_mention_prob:
        caption = f"{caption}, plus {_pick(secondary.vocab, u[11])} ({_pick(secondary.names, u[12])})"
    cat = onto.categories[onto.category_index[topic.category]]
    tags = [vocab[i1].replace(" ", ""), _pick(f.words, u[13]).replace(" ", ""), _pick(cat.words, u[14])]
    if not use_syn:
        tags.insert(0, name.replace(" ", ""))
    if modifier:
        tags.append(modifier.replace(" ", ""))
    if u[15] < knobs.noise_tag_prob:
        tags.append(_pick(NOISE_TAGS, (u[15] * 7.31) % 1.0))
    if u[15] > 1.0 - knobs.spam_tag_prob:
        other = onto.topics[int(((u[15] * 101.7) % 1.0) * len(onto.topics))]
        tags.append(other.head.replace(" ", ""))
    return title[:1].upper() + title[1:], caption.strip(), list(dict.fromkeys(t for t in tags if t))


@dataclass(frozen=True)
class QueryKnobs:
    typo_prob: float = 0.06  # one word of the query has a slip
    slang_prob: float = 0.12  # facet said in slang ("tut", "lol")
    synonym_query_prob: float = 0.15  # the topic is named by a synonym
    name_query_prob: float = 0.3  # the topic is named by one of its names instead of the head term
    filler_prob: float = 0.2  # tail queries get an extra word ("easy", "2024")
    facet_first_prob: float = 0.4  # word order: "how to python" vs "python how to"


def topic_surface(topic: Topic, u_kind: float, u_pick: float, knobs: QueryKnobs, *, allow_syn: bool) -> str:
    if allow_syn and u_kind < knobs.synonym_query_prob and topic.synonyms:
        return _pick(topic.synonyms, u_pick)
    if u_kind < knobs.synonym_query_prob + knobs.name_query_prob:
        return _pick(topic.names, u_pick)
    return topic.head


def phrase_query(
    onto: Ontology,
    topic: Topic,
    facet: str | None,
    modifier: str | None,
    u: np.ndarray,
    knobs: QueryKnobs,
    *,
    allow_syn: bool = True,
    avoid: str | None = None,
) -> tuple[str, str]:
    """(query text, surface) for a need at the given specificity; ``u`` holds 10 uniforms.

    ``facet`` None → head query (the topic alone); ``modifier`` set → tail. ``avoid`` re-draws the
    surface once when it equals the given one (a reformulation in other words).
    """
    surface = topic_surface(topic, u[0], u[1], knobs, allow_syn=allow_syn and facet is not None)
    if avoid is not None and surface == avoid:
        surface = topic_surface(topic, (u[0] + 0.5) % 1.0, (u[1] + 0.37) % 1.0, knobs, allow_syn=True)
    parts = [surface]
    if facet is not None:
        f = onto.facets[facet]
        fw = _pick(f.slang, u[3]) if u[2] < knobs.slang_prob else _pick(f.words, u[3])
        parts = [fw, surface] if u[4] < knobs.facet_first_prob else [surface, fw]
    if modifier:
        parts.append(modifier)
        if u[5] < knobs.filler_prob:
            parts.append(_pick(QUERY_FILLERS, u[6]))
    words = " ".join(parts).split()
    if u[7] < knobs.typo_prob:
        j = int(u[8] * len(words)) % len(words)
        words[j] = typo(words[j], u[9], (u[8] * 13.1) % 1.0)
    return " ".join(words), surface
