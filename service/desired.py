"""Declarative serving state: the desired A/B config (which bundle each arm serves) and each worker's report.

The desired config is a document with a growing ``version``, kept in Redis (shared by every worker
and replica) or, without Redis, in a JSON file in a folder the workers of one box share
(``CROPS_STATE_DIR``; ``crops serve --workers N`` makes one). Every worker polls it and converges:
a newer valid version is loaded, verified, warmed and swapped in. Each worker also reports what it
serves (config version, content id per bundle, last error) with a heartbeat, so ``/admin/reload``
and ``PUT /admin/config`` can write the desired state and then report each worker's convergence.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from core.atomic import atomic_write_bytes
from service.redis_link import RedisLink

CONFIG_KEY = "experiments"
WORKERS_KEY = "workers"


def worker_name() -> str:
    """This worker's name in reports: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class DesiredStore:
    """Read/write the desired config and the workers' reports (Redis, a shared folder, or this process only)."""

    def __init__(self, *, redis: RedisLink | None, state_dir: Path | None, stale_s: float) -> None:
        self.redis = redis
        self.dir = state_dir if redis is None else None
        self.stale_s = stale_s
        self._local: dict[str, dict[str, Any]] = {}
        if self.dir is not None:
            (self.dir / "workers").mkdir(parents=True, exist_ok=True)

    @property
    def shared(self) -> bool:
        """Whether other processes see what this one writes."""
        return self.redis is not None or self.dir is not None

    def where(self) -> str:
        if self.redis is not None:
            return "redis"
        return "file" if self.dir is not None else "process"

    async def read(self) -> bytes | None:
        """The desired config document (None when absent or unreachable)."""
        if self.redis is not None:
            key = self.redis.key(CONFIG_KEY)
            raw = await self.redis.call("config_get", lambda c: c.get(key))
            return raw.encode() if isinstance(raw, str) else raw
        if self.dir is not None:
            try:
                return await asyncio.to_thread((self.dir / "desired.json").read_bytes)
            except FileNotFoundError:
                return None
        return None

    async def write(self, payload: str) -> bool:
        """Store the desired config; False when the store is unreachable."""
        if self.redis is not None:
            key = self.redis.key(CONFIG_KEY)
            return await self.redis.call("config_set", lambda c: c.set(key, payload)) is not None
        if self.dir is not None:
            await asyncio.to_thread(atomic_write_bytes, self.dir / "desired.json", payload.encode())
        return True

    async def report(self, status: dict[str, Any]) -> None:
        """Publish this worker's status (a heartbeat: ``at`` is set here)."""
        row = {**status, "at": time.time()}
        name = row["worker"]
        self._local = {name: row}
        if self.redis is not None:
            key, payload = self.redis.key(WORKERS_KEY), orjson.dumps(row)
            await self.redis.call("worker_report", lambda c: c.hset(key, name, payload))
        elif self.dir is not None:
            path = self.dir / "workers" / f"{name.replace(':', '_')}.json"
            await asyncio.to_thread(atomic_write_bytes, path, orjson.dumps(row))

    async def workers(self) -> dict[str, dict[str, Any]]:
        """Reports of the live workers (heartbeat younger than ``stale_s``)."""
        rows: list[dict[str, Any]] = []
        if self.redis is not None:
            key = self.redis.key(WORKERS_KEY)
            raw = await self.redis.call("worker_list", lambda c: c.hgetall(key))
            rows = [orjson.loads(v) for v in (raw or {}).values()]
        elif self.dir is not None:
            rows = await asyncio.to_thread(self._read_dir)
        else:
            rows = list(self._local.values())
        now = time.time()
        return {r["worker"]: r for r in rows if now - float(r.get("at", 0)) <= self.stale_s}

    def _read_dir(self) -> list[dict[str, Any]]:
        assert self.dir is not None
        rows = []
        for p in (self.dir / "workers").glob("*.json"):
            try:
                rows.append(orjson.loads(p.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue  # a worker that exited mid-listing
        return rows
