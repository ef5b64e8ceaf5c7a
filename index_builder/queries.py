"""Queries the index is tuned on: the ones it will serve (a file or a log), else paraphrase-like
pseudo-queries with a safety margin.

Recall of an IVF-PQ index against exact search depends on the queries. A query that is a prefix of
one document's title has a tight, easy neighbourhood; a real query describes a subject in its own
words and sits between documents, where the exact top-100 is a wide band of near-ties over many
inverted lists. Tuning on the first kind recorded ≥ 0.95 where real sentence queries got less.
So: tune on real queries when there are any (``--queries``), with a disjoint held-out part for the
reported figure; otherwise use pseudo-queries built to sit between documents, and tune to the target
plus ``PSEUDO_MARGIN``. The manifest's index section records which kind the recall figure is about.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from core.corpus import Doc, iter_jsonl
from core.errors import CropsError, ErrorKind
from core.normalize import normalize_text

# Extra recall the tuner must reach on pseudo-queries: the gap measured between them and real query
# sets (benchmarks/real_query_recall.py) stays inside it.
PSEUDO_MARGIN = 0.02
MIN_QUERIES = 20  # fewer real queries than this give a recall figure too noisy to tune on


@dataclass(frozen=True)
class QuerySets:
    """Tuning and (disjoint) report query texts and what they are."""

    tune: list[str]
    report: list[str]
    kind: str  # "given" (the queries the index will serve) or "pseudo-paraphrase"
    source: str
    margin: float  # added to the recall target while tuning


def read_query_texts(path: Path | str) -> list[str]:
    """Query texts from a file: plain text (one per line); JSONL whose objects carry ``query``
    (an exposure log) or ``text`` (BEIR ``queries.jsonl``); a Parquet table with a ``query`` column
    (``search_log``). Order of first appearance, duplicates and blanks dropped."""
    path = Path(path)
    if not path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"query file {path} does not exist")
    texts: list[str] = []
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            if "query" not in pq.read_schema(path).names:
                raise CropsError(ErrorKind.INVALID_INPUT, f"{path}: no 'query' column (a search_log has one)")
            texts = [str(q) for q in pq.read_table(path, columns=["query"]).column("query").to_pylist() if q]
        except (OSError, pa.ArrowInvalid) as exc:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{path}: not a readable Parquet file ({exc})") from exc
    elif name.endswith((".jsonl", ".jsonl.gz")):
        for lineno, row in iter_jsonl(path):
            q = row.get("query", row.get("text")) if isinstance(row, dict) else row
            if not isinstance(q, str):
                raise CropsError(ErrorKind.INVALID_INPUT, f"{path}:{lineno}: no 'query' or 'text' string")
            texts.append(q)
    else:
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{path}: not UTF-8 text (one query per line)") from exc
    seen: dict[str, None] = {}
    for q in texts:
        norm = normalize_text(q)
        if norm:
            seen.setdefault(norm, None)
    return list(seen)


def split_given(texts: list[str], n: int, seed: int, source: str) -> QuerySets:
    """Shuffle the unique queries; the first half (≤ n) tunes, the rest (≤ n) gives the report."""
    if len(texts) < MIN_QUERIES:
        raise CropsError(ErrorKind.INVALID_INPUT,
                         f"{source}: {len(texts)} distinct queries; need at least {MIN_QUERIES} to tune recall")
    order = list(texts)
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return QuerySets(order[: min(n, half)], order[half : half + n], "given", source, 0.0)


def paraphrase_queries(docs: list[Doc], n: int, seed: int = 0) -> list[str]:
    """Pseudo-queries that sit between documents as real ones do: 3-8 words drawn from a random
    document's title and text in random order, about a third of them swapped for words of another
    random document (a query mixes a subject with words the catalog puts elsewhere)."""
    rng = random.Random(seed)
    words = [normalize_text(f"{d.title} {d.text}").split() for d in docs]
    pool = [i for i, w in enumerate(words) if len(w) >= 2]
    if not pool:
        return []
    out: list[str] = []
    for _ in range(n):
        own = words[rng.choice(pool)]
        other = words[rng.choice(pool)]
        k = min(len(own), rng.randint(3, 8))
        picked = rng.sample(own, k)
        q = [rng.choice(other) if rng.random() < 0.33 else w for w in picked]
        out.append(" ".join(q))
    return out


def query_sets(
    docs: list[Doc], queries: Path | str | None, n: int, seed: int = 0
) -> QuerySets:
    """Tuning + report queries: from ``queries`` when given, else paraphrase-like pseudo-queries."""
    if queries is not None:
        return split_given(read_query_texts(queries), n, seed, str(queries))
    return QuerySets(paraphrase_queries(docs, n, seed), paraphrase_queries(docs, n, seed + 1),
                     "pseudo-paraphrase", "generated from the corpus", PSEUDO_MARGIN)
