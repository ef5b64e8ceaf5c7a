"""Reusable evaluation on a world's test sets, by query class (head / torso / tail / ambiguous).

``evaluate_run(world_dir, ranked)`` scores any retriever: ``ranked`` maps a query string to its
ranked video ids (best first). Metrics, macro-averaged over queries:

- ``ct``: Recall@100 on videos clicked in the test days (the paper's CT set);
- ``qr``: Recall@100, original query → videos clicked after its reformulation (the QR set);
- ``graded``: NDCG@4 on the graded "human labels" (linear gains 0..3; unjudged = 0).

A query of a set missing from ``ranked`` counts as an empty ranking, unless ``only_ranked=True``
(evaluate a sample: only the queries you ranked). Baselines: ``bm25_run`` (bm25s) and
``dense_run`` (pretrained MiniLM via ``training.encoder.TextEncoder``, exact inner-product search).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from core.errors import CropsError, ErrorKind
from core.ir_metrics import ndcg_at_k, recall_at_k
from core.normalize import doc_text, normalize_text

CLASSES = ("head", "torso", "tail")


def _read(world_dir: Path, rel: str) -> dict[str, list[Any]]:
    p = Path(world_dir) / rel
    if not p.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{p} missing: is {world_dir} a world built by `crops world build`?")
    t = pq.read_table(p)
    return {c: t.column(c).to_pylist() for c in t.column_names}


def load_eval_sets(world_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{set name: {query: {video_id: gain}}} for ct, qr (gain 1) and graded (gain = grade)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in ("ct", "qr", "graded"):
        cols = _read(world_dir, f"eval/{name}.parquet")
        gains = cols.get("grade") or [1] * len(cols["query"])
        sets: dict[str, dict[str, float]] = {}
        for q, v, g in zip(cols["query"], cols["video_id"], gains, strict=True):
            sets.setdefault(q, {})[v] = float(g)
        out[name] = sets
    return out


def query_classes(world_dir: Path) -> dict[str, tuple[str, bool]]:
    cols = _read(world_dir, "truth/queries.parquet")
    return {q: (c, bool(a)) for q, c, a in zip(cols["query"], cols["query_class"], cols["ambiguous"], strict=True)}


def eval_queries(world_dir: Path, max_per_set: int | None = None, seed: int = 0) -> list[str]:
    """Queries of the three eval sets (a seeded sample of at most ``max_per_set`` per set)."""
    rng = np.random.default_rng(seed)
    out: set[str] = set()
    for qs in load_eval_sets(world_dir).values():
        keys = sorted(q for q, rel in qs.items() if any(g > 0 for g in rel.values()))
        if max_per_set is not None and len(keys) > max_per_set:
            keys = [keys[i] for i in sorted(rng.choice(len(keys), max_per_set, replace=False))]
        out.update(keys)
    return sorted(out)


def evaluate_run(
    world_dir: Path,
    ranked: Mapping[str, Sequence[str]],
    *,
    k_recall: int = 100,
    k_ndcg: int = 4,
    only_ranked: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """{set: {group: {metric: value, "queries": n}}}; groups: all, head, torso, tail, ambiguous."""
    classes = query_classes(world_dir)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, qrels in load_eval_sets(world_dir).items():
        metric = f"ndcg@{k_ndcg}" if name == "graded" else f"recall@{k_recall}"
        per: dict[str, list[float]] = {g: [] for g in ("all", *CLASSES, "ambiguous")}
        for q, rel in qrels.items():
            if not any(g > 0 for g in rel.values()) or (only_ranked and q not in ranked):
                continue
            run = list(ranked.get(q, ()))
            v = ndcg_at_k(run, rel, k_ndcg) if name == "graded" else recall_at_k(run, rel, k_recall)
            cls, amb = classes.get(q, ("tail", False))
            per["all"].append(v)
            per[cls].append(v)
            if amb:
                per["ambiguous"].append(v)
        out[name] = {
            g: {metric: float(np.mean(vs)) if vs else float("nan"), "queries": float(len(vs))} for g, vs in per.items()
        }
    return out


def load_doc_texts(world_dir: Path) -> tuple[list[str], list[str]]:
    """(video ids, normalised doc texts) exactly as the service indexes them (title + caption + tags)."""
    t = pq.read_table(Path(world_dir) / "videos.parquet", columns=["video_id", "title", "caption", "tags"])
    ids = t.column("video_id").to_pylist()
    texts = [
        doc_text(ti, " ".join(x for x in (c, " ".join(tg or [])) if x))
        for ti, c, tg in zip(
            t.column("title").to_pylist(), t.column("caption").to_pylist(), t.column("tags").to_pylist(), strict=True
        )
    ]
    return ids, texts


def bm25_run(world_dir: Path, queries: Sequence[str], k: int = 100) -> dict[str, list[str]]:
    """BM25 (bm25s, English stopwords) over the catalog."""
    import bm25s

    ids, texts = load_doc_texts(world_dir)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    qtok = bm25s.tokenize([normalize_text(q) for q in queries], stopwords="en", show_progress=False)
    docs, _scores = retriever.retrieve(qtok, k=min(k, len(ids)), show_progress=False, n_threads=1)
    return {q: [ids[int(j)] for j in row] for q, row in zip(queries, docs, strict=True)}


def exact_search(qv: np.ndarray, dv: np.ndarray, k: int) -> np.ndarray:
    """Top-k rows of ``dv`` by inner product for each row of ``qv`` (chunked, exact)."""
    k = min(k, len(dv))
    out = np.empty((len(qv), k), np.int64)
    for s in range(0, len(qv), 512):
        sc = qv[s : s + 512] @ dv.T
        top = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sc, top, axis=1), axis=1, kind="stable")
        out[s : s + 512] = np.take_along_axis(top, order, axis=1)
    return out


def dense_run(
    world_dir: Path,
    queries: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    k: int = 100,
    *,
    cache_key: str | None = None,
) -> dict[str, list[str]]:
    """Exact top-k of a dense encoder over the world's catalog.

    ``encode`` maps texts to L2-normalised vectors (the caller owns the model: the world imports no
    torch). With ``cache_key`` the doc vectors are cached in ``WORLD/cache/`` keyed by it and the
    catalog text.
    """
    import hashlib

    ids, texts = load_doc_texts(world_dir)
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
    cache_file = Path(world_dir) / "cache" / f"{cache_key}_docs_{digest}.npy" if cache_key else None
    if cache_file is not None and cache_file.is_file():
        dv = np.load(cache_file)
    else:
        dv = encode(texts)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache_file, dv)
    qv = encode([normalize_text(q) for q in queries])
    top = exact_search(qv.astype(np.float32), dv.astype(np.float32), k)
    return {q: [ids[int(j)] for j in row] for q, row in zip(queries, top, strict=True)}


# ----------------------------------------------------------------------------- slices

SLICE_WORDS_VERSION = 1


def world_ontology(world_dir: Path) -> Any:
    """The ontology a world was built on: the file ``world.json`` names (``ontology``), or a copy in
    the world folder (``ontology.txt``), else the embedded one."""
    import json

    from world.ontology import load_ontology

    meta_file = Path(world_dir) / "world.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    for cand in (meta.get("ontology"), (meta.get("config") or {}).get("ontology"), Path(world_dir) / "ontology.txt"):
        if cand and Path(str(cand)).is_file():
            return load_ontology(str(cand))
    return load_ontology()


def lexicon(onto: Any) -> set[str]:
    """Every word the platform's vocabulary can put in a query (topic names, synonyms, vocabulary,
    modifiers, facet words and slang, fillers): a query word outside it is a typo."""
    import re

    from world.textgen import QUERY_FILLERS

    word = re.compile(r"[a-z0-9]+")
    out: set[str] = set()
    phrases: list[str] = list(QUERY_FILLERS)
    for t in onto.topics:
        phrases += [t.head, *t.names, *t.synonyms, *t.vocab, *t.modifiers]
    for f in onto.facets.values():
        phrases += [*f.words, *f.slang]
    for p in phrases:
        out.update(word.findall(normalize_text(p)))
    return out


def query_info(world_dir: Path) -> dict[str, dict[str, Any]]:
    """Normalised query → class, ambiguous, typo, test frequency (``n_test``) and sense topics.

    ``typo`` comes from the world's table when it has the column, else from the words: a query with
    a word outside the platform's vocabulary is a typo string."""
    import re

    cols = _read(world_dir, "truth/queries.parquet")
    lex = lexicon(world_ontology(world_dir)) if "typo" not in cols else set()
    word = re.compile(r"[a-z0-9]+")
    out: dict[str, dict[str, Any]] = {}
    n = len(cols["query"])
    for i in range(n):
        q = normalize_text(str(cols["query"][i]))
        typo = bool(cols["typo"][i]) if "typo" in cols else any(w not in lex for w in word.findall(q))
        out[q] = {
            "class": str(cols["query_class"][i]),
            "ambiguous": bool(cols["ambiguous"][i]),
            "typo": typo,
            "n_test": float(cols["n_test"][i]) if "n_test" in cols and cols["n_test"][i] is not None else 1.0,
            "topics": [int(t) for t in (cols["topic_ids"][i] or [])] if "topic_ids" in cols else [],
        }
    return out


def clicked_in_training(world_dir: Path, queries: Sequence[str]) -> dict[str, set[str]]:
    """Normalised query → videos clicked for that string in the training logs (CT's 'seen' pairs)."""
    import duckdb

    wanted = set(queries)
    con = duckdb.connect()
    con.execute("SET threads TO 1")
    rows = con.execute(
        "SELECT DISTINCT query, video_id FROM read_parquet(?) WHERE clicked",
        [str(Path(world_dir) / "train" / "search_log.parquet")],
    ).fetchall()
    con.close()
    out: dict[str, set[str]] = {}
    for q, v in rows:
        nq = normalize_text(str(q))
        if nq in wanted:
            out.setdefault(nq, set()).add(str(v))
    return out


def video_topics(world_dir: Path) -> dict[str, int]:
    """Video id → its primary topic (the sense it serves)."""
    cols = _read(world_dir, "truth/video_intents.parquet")
    return {str(v): int(t) for v, t in zip(cols["video_id"], cols["primary_topic"], strict=True)}


def sense_coverage(ranked: Sequence[str], senses: Sequence[int], topic_of: Mapping[str, int], k: int) -> float:
    """Share of a query's senses (topics) with at least one video of that topic in the top ``k``."""
    if not senses:
        return float("nan")
    seen = {topic_of.get(v, -1) for v in list(ranked)[:k]}
    return sum(1 for s in senses if s in seen) / len(senses)


def sliced_means(metric: str, scores: Mapping[str, float], info: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``metric`` over the queries of ``scores``: per distinct string (macro) and weighted by test
    frequency (``/freq``), overall and on the clean / typo strings and the ambiguous ones."""
    out: dict[str, float] = {}
    groups: dict[str, list[str]] = {"": list(scores)}
    for q in scores:
        meta = info.get(q)
        if meta is None:
            continue
        kind = "typo" if meta["typo"] else "clean"
        groups.setdefault(f"/{kind}", []).append(q)
        if meta["ambiguous"]:
            groups.setdefault(f"/ambiguous/{kind}", []).append(q)
    for suffix, qs in groups.items():
        if not qs:
            continue
        vals = np.array([scores[q] for q in qs])
        w = np.array([float(info.get(q, {}).get("n_test", 1.0)) for q in qs])
        if suffix:
            out[f"{metric}{suffix}"] = float(vals.mean())
        if w.sum() > 0:
            out[f"{metric}{suffix}/freq"] = float((vals * w).sum() / w.sum())
    return out
