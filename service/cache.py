"""Result and embedding caches keyed by (content id, [nprobe,] normalised query).

Level 1 is an in-process LRU with TTL (cachetools); level 2, when Redis is configured, is shared by
all workers and replicas. The content id (a hash of the loaded query tower's, the index's and the id
map's checksums, see ``service.engine``) is part of every key: two arms serving different models or
indexes never see each other's entries, and a rebuilt index starts cold even when its manifest keeps
the bundle id. Level 1 is also purged when a swap changes what is served.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import orjson
from cachetools import TTLCache

from service.metrics import Metrics
from service.redis_link import RedisLink

Result = tuple[list[str], list[float]]


def result_key(content_id: str, nprobe: int | None, norm_query: str) -> str:
    return f"{content_id}\x1f{nprobe}\x1f{norm_query}"


def embedding_key(content_id: str, norm_query: str) -> str:
    return f"{content_id}\x1f{norm_query}"


class QueryCache:
    def __init__(
        self,
        *,
        size: int,
        ttl_s: float,
        metrics: Metrics,
        redis: RedisLink | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.redis = redis
        self._results: TTLCache[str, Result] = TTLCache(maxsize=size, ttl=ttl_s)
        self._embeddings: TTLCache[str, np.ndarray] = TTLCache(maxsize=size, ttl=ttl_s)
        self._hit = {c: metrics.cache.labels(cache=c, result="hit") for c in ("result", "redis", "embedding")}
        self._miss = {c: metrics.cache.labels(cache=c, result="miss") for c in ("result", "redis", "embedding")}

    def _redis_key(self, key: str) -> str:
        assert self.redis is not None
        return self.redis.key("r:" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest())

    async def get_result(self, key: str) -> Result | None:
        if not self.enabled:
            return None
        hit = self._results.get(key)
        if hit is not None:
            self._hit["result"].inc()
            return hit
        self._miss["result"].inc()
        if self.redis is None or not self.redis.available:
            return None
        rkey = self._redis_key(key)
        raw = await self.redis.call("cache_get", lambda c: c.get(rkey))
        if raw is None:
            self._miss["redis"].inc()
            return None
        try:
            ids, scores = orjson.loads(raw)
        except (orjson.JSONDecodeError, ValueError):
            self._miss["redis"].inc()
            return None
        self._hit["redis"].inc()
        value: Result = (ids, scores)
        self._results[key] = value
        return value

    async def put_result(self, key: str, value: Result) -> None:
        if not self.enabled:
            return
        self._results[key] = value
        if self.redis is not None and self.redis.available:
            rkey, payload, ttl = self._redis_key(key), orjson.dumps(value), max(1, int(self.ttl_s))
            await self.redis.call("cache_set", lambda c: c.set(rkey, payload, ex=ttl))

    def get_embedding(self, key: str) -> np.ndarray | None:
        if not self.enabled:
            return None
        vec = self._embeddings.get(key)
        (self._hit if vec is not None else self._miss)["embedding"].inc()
        return vec

    def put_embedding(self, key: str, vec: np.ndarray) -> None:
        if self.enabled:
            self._embeddings[key] = vec

    def purge(self) -> None:
        """Drop every in-process entry (after a swap)."""
        self._results.clear()
        self._embeddings.clear()

    def info(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "redis": self.redis is not None,
            "ttl_s": self.ttl_s,
            "results": len(self._results),
            "embeddings": len(self._embeddings),
        }
