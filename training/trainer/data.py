"""Training data: labelled samples → per-query groups → batches with a Q×D level matrix.

A *group* is one query with its labelled docs (doc key → level). A batch takes B groups and draws
``docs_per_query`` docs for each by a per-level quota (e.g. one level-5, three level-4, two level-3,
one level-2, one level-1 doc; slots a level cannot fill go to the other levels), then dedupes the
docs across the batch. As in the paper's HLA table, a query's sample set is its own drawn docs at
their levels and every other doc of the batch is level 0 (in-batch negative), except the query's
own labelled positives that another query brought, which are masked. The old batch (labels
inherited from other queries' docs, levels drawn round-robin) remains as an ablation.
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
from core.samples import POSITIVE_LEVEL, SAMPLE_COLUMNS, SAMPLES_FILE, check_samples_version


def text_key(text: str) -> str:
    """Doc key of a text-only (P3) positive: stable across runs."""
    return "text:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def read_samples(path: Path | str) -> SampleColumns:
    """Rows of a samples Parquet file/folder (the data engine's output), checked for the contract."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir() and (path / SAMPLES_FILE).exists():
        path = path / SAMPLES_FILE
    if not path.exists():
        raise CropsError(ErrorKind.NOT_FOUND, f"samples {path} do not exist (run `crops mine` first)")
    table = pq.read_table(path)
    check_samples_version(table.schema.metadata, str(path))
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
    pos_level: int = POSITIVE_LEVEL,
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


BATCH_LABELS = ("own", "inherit")
"""How a batch labels (query, doc) pairs: ``own`` is the paper's HLA batch (a query's labels only on
the docs it drew itself; every other doc of the batch is level 0, or masked when it is one of the
query's labelled positives); ``inherit`` is the old behaviour kept as an ablation (a query takes its
label for any doc of the batch, whoever drew it)."""

DEFAULT_QUOTA = "5:1,4:3,3:2,2:1,1:1"


def parse_quota(spec: str) -> dict[int, int]:
    """``"5:1,4:3,3:2"`` → {5: 1, 4: 3, 3: 2}: docs drawn per level per query (level 0 = hard
    negatives, the unlabelled docs a miner adds). Empty string → {}."""
    out: dict[int, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            lvl_s, n_s = part.split(":")
            lvl, n = int(lvl_s), int(n_s)
        except ValueError:
            raise CropsError(
                ErrorKind.INVALID_INPUT, f"level quota {spec!r}: expected 'level:count,...', e.g. {DEFAULT_QUOTA}"
            ) from None
        if not 0 <= lvl <= 9 or n < 0:
            raise CropsError(ErrorKind.INVALID_INPUT, f"level quota {spec!r}: levels 0..9, counts >= 0")
        out[lvl] = n
    return out


@dataclass
class Batch:
    queries: list[str]
    doc_keys: list[str]
    doc_texts: list[str]
    levels: torch.Tensor  # Q×D int64; IGNORE (-1) = masked pair
    drawn: list[list[str]] = field(default_factory=list)  # each query's own docs


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


def _by_quota(
    rng: np.random.Generator,
    level: Mapping[str, int],
    n: int,
    quota: Mapping[int, int],
    pos_level: int,
    max_pos: int,
) -> list[str]:
    """Up to ``quota[l]`` docs of each level l (at random within the level); slots a level cannot
    fill go round-robin to the remaining docs, highest level first, positives capped at ``max_pos``."""
    strata: dict[int, list[str]] = {}
    for d in sorted(level):  # sorted: the draw depends on (seed, step), not on dict order
        strata.setdefault(level[d], []).append(d)
    for lvl, docs in strata.items():
        strata[lvl] = [docs[i] for i in rng.permutation(len(docs))]
    chosen: list[str] = []
    for lvl in sorted(quota, reverse=True):
        chosen += strata.get(lvl, [])[: min(quota[lvl], n - len(chosen))]
    n_pos = sum(level[d] >= pos_level for d in chosen)
    taken = set(chosen)
    rest_pos = [d for lvl in sorted(strata, reverse=True) if lvl >= pos_level for d in strata[lvl] if d not in taken]
    rest_low = [d for lvl in sorted(strata, reverse=True) if lvl < pos_level for d in strata[lvl] if d not in taken]
    rest = rest_pos[: max(0, max_pos - n_pos)] + rest_low
    need = min(n - len(chosen), len(rest))
    if need > 0:
        chosen += _stratified(rng, rest, level, need)
    return chosen


def level_matrix(
    ts: TrainingSet, queries: list[str], drawn: list[list[str]], keys: list[str], mode: str = "own"
) -> torch.Tensor:
    """Q×D levels of a batch whose docs are ``keys`` (every rank's under DDP).

    ``own``: a query's label on the docs it drew; other docs are level 0 except its labelled
    positives, which are masked (IGNORE) rather than used as negatives or promoted. ``inherit``: the
    query's label on every doc it has one for (the old behaviour)."""
    from training.losses.hinfonce import IGNORE

    if mode not in BATCH_LABELS:
        raise CropsError(ErrorKind.INVALID_INPUT, f"batch labels must be own or inherit, got {mode!r}")
    col = {k: j for j, k in enumerate(keys)}
    levels = torch.zeros(len(queries), len(keys), dtype=torch.long)
    for qi, q in enumerate(queries):
        grp = ts.groups[ts.index[q]]
        own = set(drawn[qi]) if qi < len(drawn) else set()
        for d, lvl in grp.items():
            j = col.get(d)
            if j is None:
                continue
            if mode == "inherit" or d in own:
                levels[qi, j] = lvl
            elif lvl >= ts.pos_level:
                levels[qi, j] = IGNORE
    return levels


class BatchSampler:
    """Deterministic batches: step t's batch depends only on (seed, t).

    ``sampling``: ``quota`` draws each query's docs by ``quota`` (level → count), ``stratified``
    round-robin over its levels (the old draw), ``uniform`` at random. ``batch_labels``: see
    :data:`BATCH_LABELS`."""

    def __init__(
        self,
        ts: TrainingSet,
        batch_queries: int,
        docs_per_query: int,
        seed: int,
        hard_negatives: Mapping[str, list[str]] | None = None,
        max_pos: int | None = None,
        *,
        sampling: str = "quota",
        quota: Mapping[int, int] | None = None,
        batch_labels: str = "own",
    ) -> None:
        if batch_queries < 1 or docs_per_query < 1:
            raise CropsError(ErrorKind.INVALID_INPUT, "batch_queries and docs_per_query must be >= 1")
        self.ts, self.b, self.k, self.seed = ts, min(batch_queries, len(ts)), docs_per_query, seed
        self.hard_negatives = hard_negatives or {}
        self.max_pos = max_pos or max(1, docs_per_query // 2)
        if sampling not in ("quota", "stratified", "uniform"):
            raise CropsError(
                ErrorKind.INVALID_INPUT, f"sampling must be quota, stratified or uniform, got {sampling!r}"
            )
        self.sampling = sampling
        self.quota = dict(quota) if quota is not None else parse_quota(DEFAULT_QUOTA)
        if batch_labels not in BATCH_LABELS:
            raise CropsError(ErrorKind.INVALID_INPUT, f"batch labels must be own or inherit, got {batch_labels!r}")
        self.batch_labels = batch_labels

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.ts))

    def groups_at(self, step: int) -> list[int]:
        per_epoch = len(self.ts) // self.b
        epoch, slot = divmod(step, per_epoch)
        return [int(g) for g in self._order(epoch)[slot * self.b : (slot + 1) * self.b]]

    def draw(self, rng: np.random.Generator, g: int) -> list[str]:
        """One query's own docs for a batch."""
        ts = self.ts
        q, grp = ts.queries[g], ts.groups[g]
        hard = [d for d in self.hard_negatives.get(q, []) if d not in grp]
        if self.sampling == "quota":
            return _by_quota(rng, {**{d: 0 for d in hard}, **grp}, self.k, self.quota, ts.pos_level, self.max_pos)
        stratify = self.sampling == "stratified"
        pos = ts.positives(g)
        chosen = _stratified(rng, pos, grp, min(len(pos), self.max_pos), stratify)
        lower = [d for d, lvl in grp.items() if lvl < ts.pos_level]
        n_rest = min(len(lower) + len(hard), self.k - len(chosen))
        if n_rest > 0:
            # hard negatives form one more stratum below the labelled levels
            chosen += _stratified(rng, lower + hard, {**{d: -1 for d in hard}, **grp}, n_rest, stratify)
        return chosen

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, 1, step])
        ts = self.ts
        queries: list[str] = []
        keys: list[str] = []
        seen: dict[str, int] = {}
        drawn: list[list[str]] = []
        for g in self.groups_at(step):
            queries.append(ts.queries[g])
            chosen = self.draw(rng, g)
            drawn.append(chosen)
            for d in chosen:
                if d not in seen:
                    seen[d] = len(keys)
                    keys.append(d)
        levels = level_matrix(ts, queries, drawn, keys, self.batch_labels)
        texts = [ts.doc_text[d] for d in keys]
        return Batch(queries, keys, texts, levels, drawn)


def batch_stats(
    sampler: BatchSampler,
    steps: Iterable[int],
    grade: Callable[[str, str], int | None] | None = None,
) -> dict[str, Any]:
    """What the loss sees, averaged per query over the batches of ``steps``.

    - ``drawn_per_level``: the query's own docs per level (the quota as realised);
    - ``terms_per_level``: H-InfoNCE positive terms (a pair at level l ≥ 1 with some doc below l);
    - ``masked``: pairs masked (another query's doc that is one of this query's positives);
    With ``grade(query, doc_key)`` (the truth, when known): ``grade_mix`` (level → share of pairs
    per true grade, text positives excluded) and ``in_batch_relevant`` (level-0 docs per query
    with grade ≥ 2, i.e. relevant docs used as negatives)."""
    from collections import Counter

    n_q = 0
    drawn_lvl: Counter[int] = Counter()
    terms: Counter[int] = Counter()
    masked = 0
    mix: dict[int, Counter[int]] = {}
    inb_rel = 0
    for step in steps:
        b = sampler.batch(step)
        lv = b.levels.numpy()
        for qi, q in enumerate(b.queries):
            n_q += 1
            grp = sampler.ts.groups[sampler.ts.index[q]]
            for d in b.drawn[qi]:
                drawn_lvl[grp.get(d, 0)] += 1
            row = lv[qi]
            masked += int((row < 0).sum())
            present = row[row >= 0]
            lowest = int(present.min()) if present.size else 0
            for j, lvl in enumerate(row):
                lvl = int(lvl)
                if lvl >= 1 and lowest < lvl:
                    terms[lvl] += 1
                if grade is not None and lvl >= 0:
                    g = grade(q, b.doc_keys[j])
                    if g is None:
                        continue
                    mix.setdefault(lvl, Counter())[g] += 1
                    if lvl == 0 and g >= 2:
                        inb_rel += 1
    n = max(n_q, 1)
    out: dict[str, Any] = {
        "queries": n_q,
        "drawn_per_level": {str(k): v / n for k, v in sorted(drawn_lvl.items(), reverse=True)},
        "terms_per_level": {str(k): v / n for k, v in sorted(terms.items(), reverse=True)},
        "terms_per_query": sum(terms.values()) / n,
        "masked_per_query": masked / n,
    }
    if grade is not None:
        out["grade_mix"] = {
            str(lvl): {str(g): c / max(sum(cnt.values()), 1) for g, c in sorted(cnt.items())}
            for lvl, cnt in sorted(mix.items(), reverse=True)
        }
        out["in_batch_relevant_per_query"] = inb_rel / n
    return out
