"""Exposure log: one record per served request, to a bounded Redis stream and/or a rotating JSONL file.

Requests only append to a bounded in-memory queue (dropped and counted when full); a background
task writes batches. ``read_jsonl`` / ``read_stream`` read the records back and ``to_search_log``
turns them into the data engine's ``search_log`` table (one row per returned candidate).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from service.metrics import Metrics
from service.redis_link import RedisLink

log = logging.getLogger("service.exposure")

STREAM = "exposures"
# What the service knows about a candidate: it was retrieved, not whether the ranker showed it.
DEFAULT_STAGE = "rank_unexposed"


class ExposureLog:
    def __init__(
        self,
        *,
        metrics: Metrics,
        redis: RedisLink | None = None,
        stream_maxlen: int = 100_000,
        jsonl: Path | None = None,
        jsonl_max_bytes: int = 256 << 20,
        max_pending: int = 10_000,
    ) -> None:
        self.redis = redis
        self.stream_maxlen = stream_maxlen
        self.jsonl = jsonl
        self.jsonl_max_bytes = jsonl_max_bytes
        self._pending: deque[bytes] = deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._written = metrics.exposures.labels(result="written")
        self._dropped = metrics.exposures.labels(result="dropped")
        if jsonl is not None:
            jsonl.parent.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.redis is not None or self.jsonl is not None

    def record(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if len(self._pending) >= self._max_pending:
            self._dropped.inc()
            return
        self._pending.append(orjson.dumps(rec))
        self._wake.set()

    async def run(self) -> None:
        """Background writer; returns after a final flush when cancelled."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self.flush()
        except asyncio.CancelledError:
            await self.flush()
            raise

    async def flush(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(500, len(self._pending)))]
            if self.jsonl is not None:
                await asyncio.to_thread(self._append_jsonl, batch)
            if self.redis is not None:
                key, maxlen = self.redis.key(STREAM), self.stream_maxlen

                async def xadd(client: Any, batch: list[bytes] = batch, key: str = key, maxlen: int = maxlen) -> Any:
                    pipe = client.pipeline(transaction=False)
                    for item in batch:
                        pipe.xadd(key, {"r": item}, maxlen=maxlen, approximate=True)
                    return await pipe.execute()

                if await self.redis.call("exposure_xadd", xadd) is None:
                    self._dropped.inc(len(batch))
                    continue
            self._written.inc(len(batch))

    def _append_jsonl(self, batch: list[bytes]) -> None:
        assert self.jsonl is not None
        try:
            if self.jsonl.exists() and self.jsonl.stat().st_size > self.jsonl_max_bytes:
                os.replace(self.jsonl, self.jsonl.with_suffix(self.jsonl.suffix + ".1"))
            with self.jsonl.open("ab") as fh:
                fh.write(b"\n".join(batch) + b"\n")
        except OSError as exc:
            log.warning("exposure log %s not writable: %s", self.jsonl, exc)


def read_jsonl(path: Path | str) -> Iterator[dict[str, Any]]:
    """Records of a JSONL exposure log (its rotated ``.1`` predecessor first, when present)."""
    path = Path(path)
    for p in (path.with_suffix(path.suffix + ".1"), path):
        if p.is_file():
            with p.open("rb") as fh:
                for line in fh:
                    if line.strip():
                        yield orjson.loads(line)


def read_stream(redis_url: str, prefix: str = "crops:", count: int | None = None) -> list[dict[str, Any]]:
    """Records of the Redis exposure stream, oldest first."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        rows: Any = client.xrange(prefix + STREAM, count=count)
    finally:
        client.close()
    return [orjson.loads(fields[b"r"]) for _, fields in rows]


SEARCH_LOG_COLUMNS = (
    "request_id",
    "user_id",
    "ts",
    "query",
    "video_id",
    "stage",
    "position",
    "clicked",
    "play_ms",
    "arm",
    "bundle_id",
)


def to_search_log(records: Iterable[dict[str, Any]], stage: str = DEFAULT_STAGE) -> Any:
    """A pyarrow table with the ``search_log`` columns (DESIGN §4), one row per returned candidate.

    The service does not know what the ranker showed or what was clicked: ``stage`` is the caller's
    statement (default ``rank_unexposed``), ``clicked`` False and ``play_ms`` 0 until joined with
    feedback. ``arm`` and ``bundle_id`` are extra columns for per-arm analysis.
    """
    import pyarrow as pa

    cols: dict[str, list[Any]] = {c: [] for c in SEARCH_LOG_COLUMNS}
    for rec in records:
        for pos, vid in enumerate(rec["video_ids"]):
            cols["request_id"].append(rec["request_id"])
            cols["user_id"].append(rec.get("user_id") or rec["unit"])
            cols["ts"].append(int(rec["ts"]))
            cols["query"].append(rec["query"])
            cols["video_id"].append(vid)
            cols["stage"].append(stage)
            cols["position"].append(pos)
            cols["clicked"].append(False)
            cols["play_ms"].append(0)
            cols["arm"].append(rec["arm"])
            cols["bundle_id"].append(rec["bundle_id"])
    schema = pa.schema(
        [
            ("request_id", pa.string()),
            ("user_id", pa.string()),
            ("ts", pa.int64()),
            ("query", pa.string()),
            ("video_id", pa.string()),
            ("stage", pa.string()),
            ("position", pa.int32()),
            ("clicked", pa.bool_()),
            ("play_ms", pa.int64()),
            ("arm", pa.string()),
            ("bundle_id", pa.string()),
        ]
    )
    return pa.table(cols, schema=schema)
