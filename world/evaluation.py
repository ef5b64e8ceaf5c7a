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
