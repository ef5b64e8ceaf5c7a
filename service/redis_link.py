"""A Redis connection that degrades instead of failing: short timeouts, no retries, marked down on error.

While Redis is down every call returns None at once (no cache, last good config, exposures
dropped), ``crops_redis_up`` is 0 and one warning is logged; the first call after ``retry_s``
probes it again and logs when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.metrics import Metrics

log = logging.getLogger("service.redis")
T = TypeVar("T")


class RedisLink:
    def __init__(self, url: str, *, timeout_ms: float, retry_s: float, prefix: str, metrics: Metrics) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_ms / 1000.0
        self.retry_s = retry_s
        self.metrics = metrics
        self.client: Redis = Redis.from_url(
            url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.up = True
        self._down_until = 0.0
        self.last_error: str | None = None
        metrics.redis_up.set(1)

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def available(self) -> bool:
        return self.up or time.monotonic() >= self._down_until

    async def call(self, op: str, fn: Callable[[Redis], Awaitable[T]]) -> T | None:
        """Run ``fn(client)``; None when Redis is down or the call fails (the failure is counted)."""
        if not self.available:
            return None
        try:
            # A hard bound on top of the socket timeouts (connect + command + parsing).
            result = await asyncio.wait_for(fn(self.client), timeout=self.timeout_s * 3)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._mark_down(op, exc)
            return None
        if not self.up:
            self.up = True
            self.metrics.redis_up.set(1)
            log.warning("redis %s is back; cache, config updates and exposure stream resume", self._where())
        return result

    def _where(self) -> str:
        return self.url.split("@")[-1]  # never log a password

    def _mark_down(self, op: str, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(op=op).inc()
        self._down_until = time.monotonic() + self.retry_s
        self.last_error = f"{op}: {type(exc).__name__}: {exc}"[:300]
        if self.up:
            self.up = False
            self.metrics.redis_up.set(0)
            log.warning(
                "redis %s unavailable (%s); serving without redis cache, with the last good config",
                self._where(),
                self.last_error,
            )

    async def close(self) -> None:
        # Closing a dead connection may raise anything; there is nothing to do about it.
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def info(self) -> dict[str, Any]:
        return {"configured": True, "up": self.up, "last_error": self.last_error}
