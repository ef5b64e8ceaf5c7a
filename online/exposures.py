"""``crops exposures``: read the service's exposure log and the feedback events, join them, and write
``search_log.parquet`` / ``rec_log.parquet`` / ``join.json`` for ``crops mine``.

The logs come from the JSONL files or the Redis streams the service writes (``service.exposure``);
they are only read. Bad, unknown, duplicate or late events are dropped and counted by the join
(:mod:`online.joinlogs`), never fatal; an unreadable source is one ``CropsError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write_bytes, atomic_write_json
from core.errors import CropsError, ErrorKind
from online.joinlogs import DEFAULT_STAGES, JoinStats, join_logs, read_jsonl_records, read_stream_records


@dataclass(frozen=True)
class LogSource:
    """Where the service's logs are: a JSONL exposure log (plus feedback JSONL files), or Redis."""

    jsonl: Path | None = None
    redis_url: str | None = None
    prefix: str = "crops:"
    feedback_jsonl: tuple[Path, ...] = ()

    def check(self) -> None:
        """Refuse a source that names neither or both places, or files that do not exist."""
        if (self.jsonl is None) == (self.redis_url is None):
            raise CropsError(ErrorKind.INVALID_INPUT, "give exactly one of --jsonl or --redis-url")
        if self.jsonl is not None and not self.jsonl.is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{self.jsonl} does not exist")
        for f in self.feedback_jsonl:  # a rotated-away current file still has its ``.1``
            if not f.is_file() and not f.with_suffix(f.suffix + ".1").is_file():
                raise CropsError(ErrorKind.NOT_FOUND, f"{f} does not exist")

    @property
    def has_feedback(self) -> bool:
        return bool(self.feedback_jsonl) or self.redis_url is not None

    def exposures(self) -> Iterator[dict[str, Any]]:
        if self.jsonl is not None:
            return read_jsonl_records(self.jsonl)
        return read_stream_records(str(self.redis_url), self.prefix + "exposures")

    def feedback(self) -> Iterator[dict[str, Any]]:
        if self.redis_url is not None:
            yield from read_stream_records(self.redis_url, self.prefix + "feedback")
        for f in self.feedback_jsonl:
            yield from read_jsonl_records(f)


def _write_parquet(table: pa.Table, path: Path) -> None:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())


def export_logs(
    source: LogSource,
    out: Path,
    *,
    stage: str = "rank_unexposed",
    max_delay_s: float = 86_400.0,
    clock: str = "feedback",
) -> JoinStats:
    """Join ``source`` and write the tables under ``out`` (a folder), or only the search_log when
    ``out`` ends in ``.parquet``. ``stage='exposed'`` states every returned candidate was shown and
    takes no feedback (the events would say which were)."""
    source.check()
    if stage not in DEFAULT_STAGES:
        raise CropsError(ErrorKind.INVALID_INPUT, f"--stage takes one of {', '.join(DEFAULT_STAGES)}, not {stage!r}")
    if clock not in ("feedback", "service"):
        raise CropsError(ErrorKind.INVALID_INPUT, f"--clock takes feedback or service, not {clock!r}")
    if stage == "exposed" and source.feedback_jsonl:
        raise CropsError(ErrorKind.INVALID_INPUT, "--stage exposed says every candidate was shown; "
                         "with feedback the events say which were (drop one of the two)")
    events: Sequence[dict[str, Any]] | Iterator[dict[str, Any]] = () if stage == "exposed" else source.feedback()
    try:
        search, rec, stats = join_logs(source.exposures(), events, unexposed_stage=stage,
                                       max_delay_ms=round(max_delay_s * 1000), clock=clock)
    except OSError as exc:
        raise CropsError(ErrorKind.BACKEND, f"reading the logs: {exc}") from exc
    except Exception as exc:  # redis errors and the like: one line, not a traceback
        if type(exc).__module__.startswith("redis"):
            raise CropsError(ErrorKind.BACKEND, f"reading the Redis streams: {exc}") from exc
        raise
    if out.suffix == ".parquet":
        _write_parquet(search, out)
        return stats
    _write_parquet(search, out / "search_log.parquet")
    _write_parquet(rec, out / "rec_log.parquet")
    atomic_write_json(out / "join.json", stats.as_dict())
    return stats
