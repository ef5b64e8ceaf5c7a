"""Corpus readers: BEIR-style jsonl(.gz) (``_id``, ``title``, ``text``) and the ``videos`` Parquet table."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import CropsError, ErrorKind


@dataclass(frozen=True)
class Doc:
    doc_id: str
    title: str
    text: str


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a .jsonl or .jsonl.gz file.

    A line that is not JSON is ``INVALID_INPUT`` naming the file and line.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CropsError(ErrorKind.INVALID_INPUT, f"{path}:{lineno}: not JSON") from exc
            yield lineno, value


def _iter_jsonl(path: Path) -> Iterator[Doc]:
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise CropsError(ErrorKind.INVALID_INPUT, f"{path}:{lineno}: not a JSON object")
        doc_id = row.get("_id", row.get("video_id", row.get("id")))
        if doc_id is None:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{path}:{lineno}: no _id/video_id field")
        title = row.get("title") or ""
        text = row.get("text") or row.get("caption") or ""
        tags = row.get("tags")
        if tags and isinstance(tags, list):
            text = f"{text} {' '.join(map(str, tags))}".strip()
        yield Doc(str(doc_id), str(title), str(text))


def _iter_parquet(path: Path) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    cols = set(table.column_names)
    if "video_id" not in cols:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{path}: videos table needs a video_id column")
    for batch in table.to_batches(max_chunksize=10_000):
        rows = batch.to_pylist()
        for row in rows:
            tags = row.get("tags") or []
            text = " ".join(x for x in [row.get("caption") or "", " ".join(tags)] if x)
            yield Doc(str(row["video_id"]), str(row.get("title") or ""), text)


def iter_corpus(path: Path | str) -> Iterator[Doc]:
    """Documents from a jsonl(.gz) file or a ``videos`` Parquet file/folder."""
    path = Path(path)
    if not path.exists():
        raise CropsError(ErrorKind.NOT_FOUND, f"corpus {path} does not exist")
    if path.suffix == ".parquet" or path.is_dir():
        yield from _iter_parquet(path)
    elif path.name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".json")):
        yield from _iter_jsonl(path)
    else:
        raise CropsError(
            ErrorKind.INVALID_INPUT, f"corpus {path}: expected .jsonl, .jsonl.gz or .parquet"
        )


def load_corpus(path: Path | str) -> list[Doc]:
    docs = list(iter_corpus(path))
    if not docs:
        raise CropsError(ErrorKind.INVALID_INPUT, f"corpus {path} is empty")
    return docs


def load_beir_split(data: Path | str, split: str) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """Queries (id → text) that have qrels in ``split``, and the qrels (query id → doc id → grade).

    BEIR layout: ``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` with a header.
    """
    data = Path(data)
    qrels_path = data / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{qrels_path} not found: is {data} a BEIR dataset folder?")
    qrels: dict[str, dict[str, float]] = {}
    for i, line in enumerate(qrels_path.read_text().splitlines()):
        parts = line.split("\t")
        if (i == 0 and parts[0] == "query-id") or len(parts) < 3:
            continue
        qrels.setdefault(parts[0], {})[parts[1]] = float(parts[2])
    queries: dict[str, str] = {}
    queries_path = data / "queries.jsonl"
    if not queries_path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{queries_path} not found: is {data} a BEIR dataset folder?")
    with open(queries_path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["_id"] in qrels:
                queries[row["_id"]] = row["text"]
    return queries, qrels
