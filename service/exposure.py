"""Durable record logs: exposures (one record per served request) and feedback events.

A log writes to a bounded Redis stream and/or a rotating JSONL file. Requests only append to a
bounded in-memory queue; a background task writes batches. While Redis is down, batches go to a
local spool file (JSONL, one per process) instead, and are replayed into the stream once Redis
answers again: nothing is dropped silently. A record is dropped only when the in-memory queue is
full or the spool is not writable, and then counted (``result="dropped"``) and logged.

``online.exposures`` reads the records back and joins them with feedback into the data engine's
``search_log`` table (one row per returned candidate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from service.redis_link import RedisLink

log = logging.getLogger("service.exposure")

STREAM = "exposures"
FEEDBACK_STREAM = "feedback"
_BATCH = 500


class DurableLog:
    """One log (exposures or feedback): Redis stream and/or JSONL, with a local spool while Redis is down."""

    def __init__(
        self,
        stream: str,
        *,
        counter: Any,
        redis: RedisLink | None = None,
        stream_maxlen: int = 100_000,
        jsonl: Path | None = None,
        jsonl_max_bytes: int = 256 << 20,
        spool_dir: Path | None = None,
        max_pending: int = 10_000,
    ) -> None:
        self.stream = stream
        self.redis = redis
        self.stream_maxlen = stream_maxlen
        self.jsonl = jsonl
        self.jsonl_max_bytes = jsonl_max_bytes
        self.spool = (spool_dir / f"{stream}-{os.getpid()}.jsonl") if spool_dir is not None and redis else None
        self._pending: deque[bytes] = deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._count = {r: counter.labels(result=r) for r in ("written", "spooled", "replayed", "dropped")}
        if jsonl is not None:
            jsonl.parent.mkdir(parents=True, exist_ok=True)
        if self.spool is not None:
            self.spool.parent.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.redis is not None or self.jsonl is not None

    def record(self, rec: Mapping[str, Any]) -> bool:
        """Queue one record; False (counted as dropped) when the queue is full."""
        if not self.enabled:
            return False
        if len(self._pending) >= self._max_pending:
            self._count["dropped"].inc()
            log.error("%s queue full (%d): record dropped", self.stream, self._max_pending)
            return False
        self._pending.append(orjson.dumps(rec))
        self._wake.set()
        return True

    async def run(self) -> None:
        """Background writer; returns after a final flush when cancelled."""
        try:
            while True:
                # wake up now and then even without new records: what was spooled is replayed once Redis is back
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                self._wake.clear()
                await self.flush()
                if self.spool is not None and self.spool.exists() and self.redis is not None and self.redis.available:
                    await self._replay()
        except asyncio.CancelledError:
            await self.flush()
            raise

    async def flush(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(_BATCH, len(self._pending)))]
            if self.jsonl is not None:
                await asyncio.to_thread(self._append_jsonl, batch)
            if self.redis is None:
                self._count["written"].inc(len(batch))
                continue
            if await self._xadd(batch):
                self._count["written"].inc(len(batch))
                await self._replay()
            elif self.spool is not None and await asyncio.to_thread(self._append, self.spool, batch):
                self._count["spooled"].inc(len(batch))
            else:
                self._count["dropped"].inc(len(batch))
                log.error("%s: %d records dropped (redis down, no writable spool)", self.stream, len(batch))

    async def _xadd(self, batch: list[bytes]) -> bool:
        assert self.redis is not None
        key, maxlen = self.redis.key(self.stream), self.stream_maxlen

        async def xadd(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            for item in batch:
                pipe.xadd(key, {"r": item}, maxlen=maxlen, approximate=True)
            return await pipe.execute()

        return await self.redis.call(f"{self.stream}_xadd", xadd) is not None

    async def _replay(self) -> None:
        """Move what was spooled while Redis was down into the stream (oldest first)."""
        if self.spool is None or not self.spool.exists():
            return
        taken = self.spool.with_suffix(".replaying")
        if not taken.exists():
            os.replace(self.spool, taken)
        lines = [ln for ln in taken.read_bytes().split(b"\n") if ln]
        for i in range(0, len(lines), _BATCH):
            if not await self._xadd(lines[i : i + _BATCH]):
                # Redis went down again: put the rest back in front of anything spooled meanwhile
                rest = lines[i:]
                if self.spool.exists():
                    rest += [ln for ln in self.spool.read_bytes().split(b"\n") if ln]
                from core.atomic import atomic_write_bytes

                atomic_write_bytes(self.spool, b"\n".join(rest) + b"\n")
                taken.unlink()
                return
            self._count["replayed"].inc(len(lines[i : i + _BATCH]))
        taken.unlink()
        log.warning("%s: %d spooled records replayed into the stream", self.stream, len(lines))

    def _append(self, path: Path, batch: list[bytes]) -> bool:
        try:
            with path.open("ab") as fh:
                fh.write(b"\n".join(batch) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            return True
        except OSError as exc:
            log.error("%s: spool %s not writable: %s", self.stream, path, exc)
            return False

    def _append_jsonl(self, batch: list[bytes]) -> None:
        assert self.jsonl is not None
        try:
            if self.jsonl.exists() and self.jsonl.stat().st_size > self.jsonl_max_bytes:
                os.replace(self.jsonl, self.jsonl.with_suffix(self.jsonl.suffix + ".1"))
        except OSError as exc:
            log.warning("%s log %s not rotatable: %s", self.stream, self.jsonl, exc)
        self._append(self.jsonl, batch)
