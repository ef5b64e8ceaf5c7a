"""HTTP to the live service: ``/retrieve`` with the user's id (the service's A/B router picks the arm)
and ``POST /feedback`` in batches. Transient failures (connection reset, 429/503) are retried with
backoff; a 4xx is the caller's bug and stops the run with the service's message."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import httpx

from core.errors import CropsError, ErrorKind
from core.feedback import MAX_EVENTS_PER_POST, FeedbackEvent

RETRYABLE = {429, 502, 503, 504}


@dataclass(frozen=True)
class Retrieved:
    request_id: str
    arm: str
    bundle_id: str
    video_ids: list[str]


class ServiceClient:
    """One pooled async HTTP client; at most ``concurrency`` requests in flight."""

    def __init__(self, url: str, *, concurrency: int = 8, timeout_s: float = 30.0, retries: int = 12) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self._sem = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, limits=limits)
        self._pending: list[dict[str, Any]] = []
        self.feedback_posted = 0  # accepted by the service
        self.feedback_dropped = 0  # refused by the service (its log queue was full)
        self.retried = 0

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        delay = 0.05
        for attempt in range(self.retries + 1):
            wait = delay
            try:
                async with self._sem:
                    r = await self._http.post(path, json=body)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise CropsError(ErrorKind.BACKEND, f"{self.url}{path}: {exc!r}") from exc
            else:
                if r.status_code not in RETRYABLE:
                    if r.status_code >= 400:
                        raise CropsError(
                            ErrorKind.BACKEND, f"{self.url}{path} answered {r.status_code}: {r.text[:300]}"
                        )
                    return r
                if attempt == self.retries:
                    raise CropsError(ErrorKind.BACKEND, f"{self.url}{path} answered {r.status_code} {r.text[:200]}")
                # a shedding service says when to come back; a busy shared box needs the patience
                with contextlib.suppress(ValueError):
                    wait = max(delay, float(r.headers.get("retry-after", 0)))
            self.retried += 1
            await asyncio.sleep(wait)
            delay = min(delay * 2, 4.0)
        raise AssertionError("unreachable")

    async def retrieve(self, query: str, user_id: str, request_id: str, top_k: int = 100) -> Retrieved:
        r = await self._post(
            "/retrieve", {"query": query, "user_id": user_id, "request_id": request_id, "top_k": top_k}
        )
        body = r.json()
        return Retrieved(body["request_id"], body["arm"], body["bundle_id"],
                         [c["video_id"] for c in body["candidates"]])

    async def feedback(self, events: list[FeedbackEvent]) -> None:
        """Queue events; full batches are posted at once, the rest on :meth:`flush`."""
        self._pending.extend(e.model_dump() for e in events)
        while len(self._pending) >= MAX_EVENTS_PER_POST:
            batch, self._pending = self._pending[:MAX_EVENTS_PER_POST], self._pending[MAX_EVENTS_PER_POST:]
            await self._post_feedback(batch)

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_EVENTS_PER_POST], self._pending[MAX_EVENTS_PER_POST:]
            await self._post_feedback(batch)

    async def _post_feedback(self, batch: list[dict[str, Any]]) -> None:
        r = await self._post("/feedback", {"events": batch})
        body = r.json()
        self.feedback_posted += int(body.get("accepted", len(batch)))
        self.feedback_dropped += int(body.get("dropped", 0))

    async def info(self) -> dict[str, Any]:
        r = await self._http.get("/info")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    async def reload(self, bundle: str, path: str, admin_token: str | None = None) -> dict[str, Any]:
        """Hot-reload one config bundle from ``path`` (POST /admin/reload)."""
        headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
        r = await self._http.post("/admin/reload", json={"bundle": bundle, "path": path}, headers=headers,
                                  timeout=600)
        if r.status_code != 200:
            raise CropsError(ErrorKind.BACKEND, f"reload of {bundle} from {path}: {r.status_code} {r.text[:300]}")
        out: dict[str, Any] = r.json()
        return out
