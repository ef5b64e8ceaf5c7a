"""Training data: labelled samples → per-query groups → batches with a Q×D level matrix.

A *group* is one query with its labelled docs (doc key → level). A batch takes B groups, draws up
to ``docs_per_query`` docs from each (positives first, then lower levels and hard negatives,
each drawn round-robin over levels), and
dedupes the docs across the batch. The level matrix gives each (query, doc) pair the doc's label
for that query when it has one, even when another query brought the doc, else 0 (in-batch).
Sampling is a pure function of (seed, step), so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import CropsError, ErrorKind
from core.normalize import normalize_text

SOURCES = (
    "p0_click",
    "p1_reformulation",
    "p2_rec",
    "p3_llm",
    "exposed_unclicked",
    "rank_unexposed",
    "prerank_filtered",
)
SAMPLE_COLUMNS = ("query", "video_id", "text", "level", "source")


def text_key(text: str) -> str:
    """Doc key of a text-only (P3) positive: stable across runs."""
    return "text:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def read_samples(path: Path | str) -> SampleColumns:
    """Rows of a samples Parquet file/folder (the data engine's output), checked for the contract."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir() and (path / "samples.parquet").exists():
        path = path / "samples.parquet"
    if not path.exists():
        raise CropsError(ErrorKind.NOT_FOUND, f"samples {path} do not exist (run `crops mine` first)")
    table = pq.read_table(path)
    missing = [c for c in ("query", "level", "source") if c not in table.column_names]
    if missing or ("video_id" not in table.column_names and "text" not in table.column_names):
        raise CropsError(
            ErrorKind.INVALID_INPUT,
            f"{path}: samples need query, video_id/text, level, source (missing {missing})",
        )
    return SampleColumns(
        {
            c: table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
            for c in SAMPLE_COLUMNS
        }
    )


class SampleColumns(dict[str, list[Any]]):
    """Samples as columns (cheaper than millions of row dicts); iterates as (query, video_id, text,
    level, source) tuples."""

    def tuples(self) -> Iterable[tuple[Any, Any, Any, Any, Any]]:
        return zip(*(self[c] for c in SAMPLE_COLUMNS), strict=True)

    def __len__(self) -> int:
        return len(self["query"]) if "query" in self else 0


@dataclass
class TrainingSet:
    """Groups of (normalised query → {doc key: level}) and the text of every doc key."""

    queries: list[str]
    groups: list[dict[str, int]]
    doc_text: dict[str, str]
    pos_level: int
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {q: i for i, q in enumerate(self.queries)}

    def __len__(self) -> int:
        return len(self.queries)

    def positives(self, g: int) -> list[str]:
        return [d for d, lvl in self.groups[g].items() if lvl >= self.pos_level]

    def level_counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for grp in self.groups:
            for lvl in grp.values():
                out[lvl] = out.get(lvl, 0) + 1
        return dict(sorted(out.items()))


def build_training_set(
    rows: Iterable[Mapping[str, Any]] | SampleColumns,
    video_text: Mapping[str, str],
    *,
    sources: Iterable[str] | None = None,
    level_map: Callable[[int, str], int] | None = None,
    pos_level: int = 4,
) -> TrainingSet:
    """Group samples per query, keeping ``sources`` (default all) and mapping levels.

    ``video_text`` maps video_id → doc text (``core.normalize.doc_text``); samples whose video is
    unknown are dropped. A doc keeps its highest level for a query. Only queries with at least one
    doc at ``pos_level`` or above become training groups.
    """
    keep = set(sources) if sources is not None else None
    by_query: dict[str, dict[str, int]] = {}
    doc_text: dict[str, str] = {}
    tuples = (
        rows.tuples()
        if isinstance(rows, SampleColumns)
        else ((r["query"], r.get("video_id"), r.get("text"), r["level"], r.get("source")) for r in rows)
    )
    norm_q: dict[str, str] = {}
    for query, vid, text, level, source in tuples:
        src = str(source or "")
        if keep is not None and src not in keep:
            continue
        if vid is not None:
            key = str(vid)
            if key not in video_text:
                continue
            doc_text.setdefault(key, video_text[key])
        elif text:
            norm = normalize_text(str(text))
            key = text_key(norm)
            doc_text.setdefault(key, norm)
        else:
            continue
        lvl = int(level)
        if level_map is not None:
            lvl = level_map(lvl, src)
        if lvl < 0:
            continue
        q = norm_q.get(query)
        if q is None:
            q = norm_q[query] = normalize_text(str(query))
        grp = by_query.setdefault(q, {})
        grp[key] = max(grp.get(key, -1), lvl)
    queries = sorted(q for q, g in by_query.items() if any(v >= pos_level for v in g.values()))
    if not queries:
        raise CropsError(
            ErrorKind.INVALID_INPUT,
            f"no query has a positive (level >= {pos_level}) after filtering the samples",
        )
    return TrainingSet(queries, [by_query[q] for q in queries], doc_text, pos_level)


@dataclass
class Batch:
    queries: list[str]
    doc_keys: list[str]
    doc_texts: list[str]
    levels: torch.Tensor  # Q×D int64


def _stratified(
    rng: np.random.Generator, docs: list[str], level: Mapping[str, int], n: int, stratify: bool = True
) -> list[str]:
    """``n`` of ``docs`` drawn round-robin over their levels, highest level first, at random within
    a level: a query's rarer strata (a reformulation positive among dozens of clicks, a ranked-
    unexposed doc among many pre-rank-filtered ones) are not drowned by its most common one.
    ``stratify=False`` draws uniformly instead."""
    strata: dict[int, list[str]] = {}
    for d in docs:
        strata.setdefault(level[d] if stratify else 0, []).append(d)
    pools = [[s[i] for i in rng.permutation(len(s))] for _, s in sorted(strata.items(), reverse=True)]
    out: list[str] = []
    depth = 0
    while len(out) < n:
        for pool in pools:
            if depth < len(pool) and len(out) < n:
                out.append(pool[depth])
        depth += 1
    return out


class BatchSampler:
    """Deterministic batches: step t's batch depends only on (seed, t)."""

    def __init__(
        self,
        ts: TrainingSet,
        batch_queries: int,
        docs_per_query: int,
        seed: int,
        hard_negatives: Mapping[str, list[str]] | None = None,
        max_pos: int | None = None,
        stratified: bool = True,
    ) -> None:
        if batch_queries < 1 or docs_per_query < 1:
            raise CropsError(ErrorKind.INVALID_INPUT, "batch_queries and docs_per_query must be >= 1")
        self.ts, self.b, self.k, self.seed = ts, min(batch_queries, len(ts)), docs_per_query, seed
        self.hard_negatives = hard_negatives or {}
        self.max_pos = max_pos or max(1, docs_per_query // 2)
        self.stratified = stratified

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.ts))

    def groups_at(self, step: int) -> list[int]:
        per_epoch = len(self.ts) // self.b
        epoch, slot = divmod(step, per_epoch)
        return [int(g) for g in self._order(epoch)[slot * self.b : (slot + 1) * self.b]]

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, 1, step])
        ts = self.ts
        queries: list[str] = []
        keys: list[str] = []
        seen: dict[str, int] = {}
        group_ids = self.groups_at(step)
        for g in group_ids:
            q = ts.queries[g]
            queries.append(q)
            grp = ts.groups[g]
            pos = ts.positives(g)
            n_pos = min(len(pos), self.max_pos)
            chosen = _stratified(rng, pos, grp, n_pos, self.stratified)
            lower = [d for d, lvl in grp.items() if lvl < ts.pos_level]
            hard = [d for d in self.hard_negatives.get(q, []) if d not in grp]
            n_rest = min(len(lower) + len(hard), self.k - len(chosen))
            if n_rest > 0:
                # hard negatives form one more stratum below the labelled levels
                chosen += _stratified(rng, lower + hard, {**{d: -1 for d in hard}, **grp}, n_rest, self.stratified)
            for d in chosen:
                if d not in seen:
                    seen[d] = len(keys)
                    keys.append(d)
        levels = torch.zeros(len(queries), len(keys), dtype=torch.long)
        for qi, g in enumerate(group_ids):
            grp = ts.groups[g]
            for d, lvl in grp.items():
                j = seen.get(d)
                if j is not None:
                    levels[qi, j] = lvl
        texts = [ts.doc_text[d] for d in keys]
        return Batch(queries, keys, texts, levels)
