"""The catalog: videos with text, category, upload time, and their latent intents (the truth).

``generate_catalog`` is a pure function of (knobs, seed, start time). With a real source
(``load_real_texts``: microlens100k_titles, kuairec_captions, activitynet_captions, or any jsonl of
titles) a share of the videos carries real text; each real video gets the ontology topic its words
match best, or none (background: relevant to no query). ``write_catalog_jsonl`` writes BEIR-style
jsonl (``_id``, ``title``, ``text`` = caption + tags) for the service's default bundle.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from core.corpus import iter_jsonl
from core.errors import CropsError, ErrorKind
from world.config import CatalogKnobs, WorldConfig
from world.files import atomic_path, write_parquet
from world.ontology import Ontology, load_ontology
from world.seeding import stream
from world.textgen import TextKnobs, video_text

DAY_MS = 86_400_000
REAL_SOURCES = ("microlens100k_titles", "kuairec_captions", "activitynet_captions")


@dataclass
class Catalog:
    """Columns of the videos table plus the latent truth (-1 = none)."""

    video_id: list[str]
    title: list[str]
    caption: list[str]
    tags: list[list[str]]
    category: list[str]
    upload_ts: np.ndarray  # int64 ms
    p_topic: np.ndarray  # primary topic (-1 background)
    p_intent: np.ndarray
    s_topic: np.ndarray  # secondary topic or -1
    s_intent: np.ndarray
    modifier: np.ndarray  # global modifier id or -1 (see modifier_ids)
    quality: np.ndarray  # intrinsic appeal (lognormal), drives the feed and clicks a little
    duration_ms: np.ndarray
    real_text: np.ndarray  # bool: text came from a real source
    asr: list[str]  # hidden speech transcript: the legacy stack indexes it, the published catalog lacks it

    def __len__(self) -> int:
        return len(self.video_id)

    def videos_table(self) -> pa.Table:
        return pa.table(
            {
                "video_id": pa.array(self.video_id, pa.string()),
                "title": pa.array(self.title, pa.string()),
                "caption": pa.array(self.caption, pa.string()),
                "tags": pa.array(self.tags, pa.list_(pa.string())),
                "category": pa.array(self.category, pa.string()),
                "upload_ts": pa.array(self.upload_ts, pa.int64()),
                "duration_ms": pa.array(self.duration_ms, pa.int64()),
            }
        )

    def intents_table(self, onto: Ontology) -> pa.Table:
        """The truth about each video (never shown to a retriever)."""
        fac = np.array([*onto.intent_facet, ""], dtype=object)
        return pa.table(
            {
                "video_id": pa.array(self.video_id, pa.string()),
                "primary_topic": pa.array(self.p_topic, pa.int32()),
                "primary_intent": pa.array(self.p_intent, pa.int32()),
                "primary_facet": pa.array(fac[self.p_intent].tolist(), pa.string()),
                "secondary_topic": pa.array(self.s_topic, pa.int32()),
                "secondary_intent": pa.array(self.s_intent, pa.int32()),
                "modifier": pa.array(self.modifier, pa.int32()),
                "quality": pa.array(self.quality, pa.float32()),
                "real_text": pa.array(self.real_text, pa.bool_()),
                "asr_text": pa.array(self.asr, pa.string()),
            }
        )


def modifier_ids(onto: Ontology) -> dict[tuple[int, str], int]:
    """Global id of each (topic, modifier) pair."""
    out: dict[tuple[int, str], int] = {}
    for t in onto.topics:
        for m in t.modifiers:
            out[(t.topic_id, m)] = len(out)
    return out


def category_popularity(onto: Ontology, seed: int, zipf: float) -> np.ndarray:
    """Global demand per category: Zipf over a seeded order (no category is favoured by design)."""
    order = stream(seed, "category-order").permutation(len(onto.categories))
    w = np.empty(len(onto.categories))
    w[order] = 1.0 / np.arange(1, len(onto.categories) + 1) ** zipf
    out: np.ndarray = w / w.sum()
    return out


def topic_popularity(onto: Ontology, seed: int, concentration: float) -> np.ndarray:
    """P(topic | category): a seeded Dirichlet per category (sums to 1 within each category)."""
    rng = stream(seed, "topic-popularity")
    out = np.zeros(len(onto.topics))
    for ci in range(len(onto.categories)):
        idx = np.flatnonzero(onto.topic_category == ci)
        out[idx] = rng.dirichlet(np.full(len(idx), concentration))
    return out


def generate_catalog(
    knobs: CatalogKnobs,
    seed: int,
    *,
    start_ts_ms: int,
    log_days: int,
    zipf: float = 1.0,
    topic_concentration: float = 1.0,
    real: list[RealText] | None = None,
    progress: bool = True,
    onto: Ontology | None = None,
) -> Catalog:
    onto = onto or load_ontology()
    rng = stream(seed, "catalog")
    n = knobs.n_videos
    n_real = min(len(real), round(n * knobs.real_share)) if real else 0
    n_gen = n - n_real
    cat_w = category_popularity(onto, seed, zipf) ** knobs.supply_follows_demand
    top_w = topic_popularity(onto, seed, topic_concentration)
    topic_w = cat_w[onto.topic_category] * top_w
    topic_w /= topic_w.sum()
    mods = modifier_ids(onto)
    n_topics = len(onto.topics)

    p_topic = rng.choice(n_topics, size=n_gen, p=topic_w).astype(np.int32)
    u = rng.random((n_gen, 24))
    cat_facets = [onto.categories[onto.topic_category[t]].facets for t in range(n_topics)]
    p_intent = np.empty(n_gen, np.int32)
    s_topic = np.full(n_gen, -1, np.int32)
    s_intent = np.full(n_gen, -1, np.int32)
    modifier = np.full(n_gen, -1, np.int32)
    titles: list[str] = []
    captions: list[str] = []
    tags: list[list[str]] = []
    tknobs = TextKnobs(knobs.synonym_text_prob, knobs.clickbait_prob, knobs.noise_tag_prob, knobs.spam_tag_prob)
    for i in tqdm(range(n_gen), desc="catalog", unit="video", disable=not progress, mininterval=2.0):
        t = int(p_topic[i])
        topic = onto.topics[t]
        facets = cat_facets[t]
        facet = facets[int(u[i, 0] * len(facets)) % len(facets)]
        p_intent[i] = onto.intent_of[(t, facet)]
        mod = None
        if u[i, 1] < knobs.modifier_prob:
            mod = topic.modifiers[int(u[i, 2] * len(topic.modifiers)) % len(topic.modifiers)]
            modifier[i] = mods[(t, mod)]
        sec = None
        if u[i, 3] < knobs.secondary_prob:
            if u[i, 4] < 0.6:  # usually a neighbour in the same category
                same = np.flatnonzero(onto.topic_category == onto.topic_category[t])
                s = int(same[int(u[i, 5] * len(same)) % len(same)])
            else:
                s = int(u[i, 5] * n_topics) % n_topics
            if s != t:
                sf = cat_facets[s][int(u[i, 6] * len(cat_facets[s])) % len(cat_facets[s])]
                s_topic[i], s_intent[i] = s, onto.intent_of[(s, sf)]
                sec = onto.topics[s]
        title, caption, tg = video_text(onto, topic, facet, mod, sec, u[i, 8:24], tknobs)
        titles.append(title)
        captions.append(caption)
        tags.append(tg)
    category = [onto.topics[t].category for t in p_topic.tolist()]

    if n_real:
        assert real is not None
        pick = np.sort(rng.choice(len(real), size=n_real, replace=False))
        r = assign_real(onto, [real[j] for j in pick.tolist()], rng)
        titles += r.title
        captions += r.caption
        tags += r.tags
        category += r.category
        p_topic = np.concatenate([p_topic, r.p_topic])
        p_intent = np.concatenate([p_intent, r.p_intent])
        s_topic = np.concatenate([s_topic, np.full(n_real, -1, np.int32)])
        s_intent = np.concatenate([s_intent, np.full(n_real, -1, np.int32)])
        modifier = np.concatenate([modifier, r.modifier])

    # shuffle so that ids carry no information about the source or topic
    perm = rng.permutation(n)
    start = start_ts_ms
    new = rng.random(n) < knobs.new_upload_share
    hist = start - (rng.random(n) * knobs.upload_history_days * DAY_MS).astype(np.int64)
    during = start + (rng.random(n) * log_days * DAY_MS).astype(np.int64)
    upload = np.where(new, during, hist).astype(np.int64)
    quality = rng.lognormal(0.0, 0.8, n).astype(np.float32)
    duration = np.clip(rng.lognormal(np.log(30_000), 0.6, n), 5_000, 180_000).astype(np.int64)
    width = max(6, len(str(n)))
    asr = _asr(onto, p_topic[perm], knobs.asr_prob, seed)
    return Catalog(
        video_id=[f"v{i:0{width}d}" for i in range(n)],
        title=[titles[j] for j in perm],
        caption=[captions[j] for j in perm],
        tags=[tags[j] for j in perm],
        category=[category[j] for j in perm],
        upload_ts=upload,
        p_topic=p_topic[perm],
        p_intent=p_intent[perm],
        s_topic=s_topic[perm],
        s_intent=s_intent[perm],
        modifier=modifier[perm],
        quality=quality,
        duration_ms=duration,
        real_text=np.concatenate([np.zeros(n_gen, bool), np.ones(n_real, bool)])[perm],
        asr=asr,
    )


def _asr(onto: Ontology, p_topic: np.ndarray, prob: float, seed: int) -> list[str]:
    """What is said in the video (speech recognition): usually the topic's plain name and a few of its
    words, even when title and caption use a synonym. Its own random stream: the visible catalog is
    the same whatever this knob is."""
    rng = stream(seed, "catalog-asr")
    u = rng.random((len(p_topic), 4))
    out = []
    for i, t in enumerate(p_topic.tolist()):
        if t < 0 or u[i, 0] >= prob:
            out.append("")
            continue
        tp = onto.topics[t]
        k = len(tp.vocab)
        name = tp.names[int(u[i, 1] * len(tp.names)) % len(tp.names)]
        out.append(f"{tp.head} {name} {tp.vocab[int(u[i, 2] * k) % k]} {tp.vocab[int(u[i, 3] * k) % k]}")
    return out


# ---------------------------------------------------------------- real sources


@dataclass(frozen=True)
class RealText:
    title: str
    caption: str
    tags: tuple[str, ...]
    category: str | None


def _shared_data_dir() -> Path:
    env = os.environ.get("CROPS_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _iter_microlens(folder: Path) -> Iterator[RealText]:
    for f in sorted(folder.glob("*.csv")):
        with f.open(encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh):
                if len(row) >= 2 and row[1].strip():
                    title = ",".join(row[1:]).strip()
                    tags = tuple(t.strip().replace(" ", "") for t in re.findall(r"#\s*([^#]+?)\s*(?=#|$)", title))
                    yield RealText(title, "", tags, None)


def _iter_kuairec(folder: Path) -> Iterator[RealText]:
    for f in sorted(folder.glob("*.csv")):
        with f.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                cap = (row.get("caption") or "").strip()
                cover = (row.get("manual_cover_text") or "").strip()
                if cover == "UNKNOWN":
                    cover = ""
                if not (cap or cover):
                    continue
                tags = tuple(
                    t.strip(" '\"") for t in (row.get("topic_tag") or "").strip("[]").split(",") if t.strip(" '\"")
                )
                cat = (row.get("first_level_category_name") or "").strip()
                yield RealText(cover or cap[:40], cap, tags, cat if cat and cat != "UNKNOWN" else None)


def _iter_activitynet(folder: Path) -> Iterator[RealText]:
    for name in ("train.json", "val.json", "test.json"):
        f = folder / name
        if not f.is_file():
            continue
        for _vid, rec in json.loads(f.read_text(encoding="utf-8")).items():
            sents = [s.strip() for s in rec.get("sentences", []) if s.strip()]
            if sents:
                yield RealText(sents[0], " ".join(sents[1:3]), (), None)


def _iter_jsonl(path: Path) -> Iterator[RealText]:
    for _, row in iter_jsonl(path):
        if isinstance(row, str):
            row = {"title": row}
        title = str(row.get("title") or "").strip()
        cap = str(row.get("caption") or row.get("text") or "").strip()
        if title or cap:
            tags = row.get("tags") if isinstance(row.get("tags"), list) else []
            yield RealText(title or cap[:60], cap if title else "", tuple(map(str, tags)), row.get("category"))


def load_real_texts(source: str | Path) -> list[RealText]:
    """Texts from a named shared data set (folder name) or a jsonl(.gz) of titles (deduplicated)."""
    src = str(source)
    path = Path(src)
    if src in REAL_SOURCES or (not path.exists() and Path(src).name in REAL_SOURCES):
        path = _shared_data_dir() / Path(src).name
    if not path.exists():
        raise CropsError(
            ErrorKind.NOT_FOUND,
            f"catalog source {source} not found (named sets: {', '.join(REAL_SOURCES)}, or a .jsonl of titles)",
        )
    name = path.name
    if path.is_dir() and "microlens" in name:
        it = _iter_microlens(path)
    elif path.is_dir() and "kuairec" in name:
        it = _iter_kuairec(path)
    elif path.is_dir() and "activitynet" in name:
        it = _iter_activitynet(path)
    elif path.is_file() and name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        it = _iter_jsonl(path)
    else:
        raise CropsError(ErrorKind.INVALID_INPUT, f"catalog source {source}: expected a known data folder or .jsonl")
    seen: set[str] = set()
    out = []
    for r in it:
        key = (r.title + "|" + r.caption).lower()
        if key not in seen:
            seen.add(key)
            out.append(r)
    if not out:
        raise CropsError(ErrorKind.INVALID_INPUT, f"catalog source {source} holds no titles")
    return out


@dataclass
class _Assigned:
    title: list[str]
    caption: list[str]
    tags: list[list[str]]
    category: list[str]
    p_topic: np.ndarray
    p_intent: np.ndarray
    modifier: np.ndarray


_WORD = re.compile(r"[a-z0-9]+")
_STOP = {
    "the",
    "a",
    "an",
    "of",
    "and",
    "in",
    "to",
    "for",
    "with",
    "on",
    "my",
    "is",
    "at",
    "it",
    "this",
    "vs",
    "how",
}


def assign_real(onto: Ontology, texts: list[RealText], rng: np.random.Generator) -> _Assigned:
    """Give each real text the topic its words match best (score ≥ 3; name words count 2, others 1).

    Unmatched texts become background videos (topic -1): relevant to no query, realistic noise.
    """
    index: dict[str, list[tuple[int, int]]] = {}
    for tp in onto.topics:
        weights: dict[str, int] = {}
        for phrase in (tp.head, *tp.names):
            for w in _WORD.findall(phrase):
                weights[w] = 2
        for phrase in (*tp.vocab, *tp.synonyms, *tp.modifiers):
            for w in _WORD.findall(phrase):
                weights.setdefault(w, 1)
        for w, wt in weights.items():
            if w not in _STOP and len(w) > 2:
                index.setdefault(w, []).append((tp.topic_id, wt))
    mods = modifier_ids(onto)
    out = _Assigned(
        [],
        [],
        [],
        [],
        np.full(len(texts), -1, np.int32),
        np.full(len(texts), -1, np.int32),
        np.full(len(texts), -1, np.int32),
    )
    noise = rng.random(len(texts)) * 0.1
    for i, r in enumerate(texts):
        text = f"{r.title} {r.caption} {' '.join(r.tags)}".lower()
        words = sorted(set(_WORD.findall(text)))  # sorted: set order varies by process
        score: dict[int, float] = {}
        for w in words:
            for t, wt in index.get(w, ()):
                score[t] = score.get(t, 0.0) + wt
        best = max(score.items(), key=lambda kv: kv[1] + noise[i] * (kv[0] % 7) / 7) if score else None
        cat = r.category or "other"
        if best is not None and best[1] >= 3:
            t = best[0]
            topic = onto.topics[t]
            facets = onto.categories[onto.topic_category[t]].facets
            facet = next((f for f in facets if any(w in text for w in onto.facets[f].words)), facets[i % len(facets)])
            out.p_topic[i] = t
            out.p_intent[i] = onto.intent_of[(t, facet)]
            mod = next((m for m in topic.modifiers if m in text), None)
            if mod is not None:
                out.modifier[i] = mods[(t, mod)]
            cat = topic.category
        out.title.append(r.title)
        out.caption.append(r.caption)
        out.tags.append(list(r.tags))
        out.category.append(cat)
    return out


# ---------------------------------------------------------------- writers


def write_videos_parquet(cat: Catalog, path: Path) -> None:
    write_parquet(cat.videos_table(), path)


def write_catalog_jsonl(cat: Catalog, path: Path) -> None:
    """BEIR-style corpus: ``_id``, ``title``, ``text`` = caption + tags (what the service indexes)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for vid, title, cap, tags in zip(cat.video_id, cat.title, cat.caption, cat.tags, strict=True):
            text = " ".join(x for x in (cap, " ".join(tags)) if x)
            fh.write(json.dumps({"_id": vid, "title": title, "text": text}, ensure_ascii=False) + "\n")


def catalog_for(
    cfg: WorldConfig,
    seed: int,
    *,
    source: str | None = None,
    progress: bool = True,
    onto: Ontology | None = None,
) -> Catalog:
    """The catalog of a world config and seed (``crops world build`` and ``crops world catalog`` agree)."""
    real = load_real_texts(source) if source else None
    return generate_catalog(
        cfg.catalog,
        seed,
        onto=onto,
        start_ts_ms=cfg.start_ts_ms,
        log_days=cfg.days,
        zipf=cfg.users.category_zipf,
        topic_concentration=cfg.users.topic_concentration,
        real=real,
        progress=progress,
    )


def build_catalog_file(
    out: Path,
    *,
    n_videos: int = 20_000,
    seed: int = 0,
    source: str | None = None,
    progress: bool = True,
    onto: Ontology | None = None,
) -> Catalog:
    """What ``crops world catalog`` does: the same videos ``crops world build`` makes for that seed."""
    from world.config import WorldConfig

    cfg = WorldConfig().with_overrides(**{"catalog.n_videos": n_videos})
    cat = catalog_for(cfg, seed, source=source, progress=progress, onto=onto)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        write_videos_parquet(cat, out)
    else:
        write_catalog_jsonl(cat, out)
    return cat
