"""The data engine's inputs and table I/O: where the logs are (checked against their contracts),
Parquet read/write (atomic), the digests that decide which steps rerun, and the held-out query half."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write_bytes
from core.errors import CropsError, ErrorKind
from core.logs import REC_LOG, SEARCH_LOG
from core.normalize import doc_text

P3_SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("text", pa.string()),
        ("example_video_id", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("theta", pa.float64()),
        ("keep", pa.bool_()),
        ("reason", pa.string()),
        ("truth_ok", pa.bool_()),  # simulated LLM only: fits the senses it read in the query (evaluation)
        ("about_topic", pa.int32()),  # simulated LLM only: what the description is about (evaluation)
        ("about_intent", pa.int32()),
        ("about_modifier", pa.string()),
    ]
)

@dataclass
class MineInputs:
    logs: Path
    videos: Path
    labels: Path | None  # (query, video_id, grade|label) parquet; None → weak labels from clicks

    @property
    def search_log(self) -> Path:
        return self.logs / SEARCH_LOG.file

    @property
    def rec_log(self) -> Path:
        return self.logs / REC_LOG.file


def resolve_inputs(logs: Path, videos: Path | None = None, labels: Path | None = None) -> MineInputs:
    """Find the tables (a world's ``WORLD/train`` works as ``--logs``) and check their columns."""
    if not logs.is_dir():
        raise CropsError(ErrorKind.NOT_FOUND, f"--logs {logs} is not a folder")
    if videos is None:
        for cand in (logs / "videos.parquet", logs.parent / "videos.parquet"):
            if cand.exists():
                videos = cand
                break
        else:
            raise CropsError(ErrorKind.NOT_FOUND, f"no videos.parquet in {logs} or its parent; pass --videos")
    if labels is None:
        for cand in (logs / "truth" / "relevance.parquet", logs.parent / "truth" / "relevance.parquet"):
            if cand.exists():
                labels = cand
                break
    inp = MineInputs(logs, videos, labels)
    for contract, path in ((SEARCH_LOG, inp.search_log), (REC_LOG, inp.rec_log)):
        _check_columns(path, contract.columns)
        contract.check_file(path)
    _check_columns(inp.videos, ("video_id", "title"))
    if labels is not None:
        cols = _check_columns(labels, ("query", "video_id"))
        if "grade" not in cols and "label" not in cols:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{labels}: labels need a 'grade' (0..3) or 'label' (0/1) column")
    return inp


def _check_columns(path: Path, needed: tuple[str, ...]) -> set[str]:
    if not path.exists():
        raise CropsError(ErrorKind.NOT_FOUND, f"{path} does not exist")
    try:
        names = set(pq.read_schema(path).names) if path.is_file() else set(pq.ParquetDataset(str(path)).schema.names)
    except Exception as exc:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{path} is not a readable Parquet table ({exc})") from exc
    missing = [c for c in needed if c not in names]
    if missing:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{path} lacks columns {missing} ")
    return names


def sql_str(s: str) -> str:
    return s.replace("'", "''")


def fingerprint(path: Path) -> str:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    return hashlib.sha256(
        json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()
    ).hexdigest()[:16]


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_table(table: pa.Table, path: Path) -> None:
    """Parquet, atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(str(path), columns=columns)


def is_eval_query(query: str) -> bool:
    """Deterministic half of the queries held out from θ's fit: the α sweep is measured on them."""
    return hashlib.sha1(query.encode("utf-8")).digest()[0] % 2 == 1


def test_query_strings(logs: Path) -> set[str]:
    """Normalised query strings of a simulated world's test sets (``eval/*.parquet`` next to the
    logs): θ is never fitted on them."""
    from core.normalize import normalize_text

    out: set[str] = set()
    for root in (logs, logs.parent):
        for path in sorted((root / "eval").glob("*.parquet")) if (root / "eval").is_dir() else []:
            if "query" in pq.read_schema(path).names:
                out.update(normalize_text(str(q)) for q in pq.read_table(path, columns=["query"]).column(0).to_pylist())
    return out


def load_video_texts(videos: Path) -> dict[str, str]:
    from core.corpus import iter_corpus

    return {d.doc_id: doc_text(d.title, d.text) for d in iter_corpus(videos)}
