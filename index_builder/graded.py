"""Graded relevance sets (BEIR layout) and recall per relevance level: does PQ hurt the tail levels?"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import CropsError, ErrorKind


@dataclass
class GradedSet:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id → doc id → level (> 0 relevant)


def load_graded(folder: Path | str, split: str = "test") -> GradedSet:
    """``queries.jsonl`` + ``qrels/<split>.tsv`` (query-id, corpus-id, score) from a BEIR-style folder."""
    folder = Path(folder)
    qpath, rpath = folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    if not qpath.is_file() or not rpath.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{folder}: need queries.jsonl and qrels/{split}.tsv")
    qrels: dict[str, dict[str, int]] = {}
    for i, line in enumerate(rpath.read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if len(parts) < 3 or (i == 0 and not parts[2].strip().lstrip("-").isdigit()):
            continue
        level = int(float(parts[2]))
        if level > 0:
            qrels.setdefault(parts[0], {})[parts[1]] = level
    queries: dict[str, str] = {}
    with open(qpath, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if str(row["_id"]) in qrels:
                    queries[str(row["_id"])] = str(row["text"])
    if not queries:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{folder}: no query has a relevant doc in qrels/{split}.tsv")
    return GradedSet(queries, qrels)


def recall_by_level(
    qids: list[str],
    exact_rows: np.ndarray,
    index_rows: np.ndarray,
    ids: list[str],
    qrels: dict[str, dict[str, int]],
) -> dict[str, dict[str, float]]:
    """Per level: share of (query, relevant doc) pairs in the top-k, exact search vs the index."""
    found: dict[int, list[int]] = {}
    present = set(ids)
    for qi, q in enumerate(qids):
        ex = {ids[r] for r in exact_rows[qi] if r >= 0}
        ix = {ids[r] for r in index_rows[qi] if r >= 0}
        for doc, level in qrels.get(q, {}).items():
            if doc not in present:
                continue
            c = found.setdefault(level, [0, 0, 0])
            c[0] += 1
            c[1] += doc in ex
            c[2] += doc in ix
    return {
        str(level): {
            "pairs": n, "exact": round(e / n, 4), "index": round(x / n, 4), "loss": round((e - x) / n, 4),
        }
        for level, (n, e, x) in sorted(found.items())
    }
