"""The retrieve use case: admission, single-flight, cache, encode+search, metrics, exposure.

This is the one request path of ``/retrieve`` and ``/retrieve/batch``; the HTTP layer
(``service.routes``) only parses, calls it and writes the answer.

Admission is a bounded queue with a deadline-aware shed. Every cache miss holds a place in the
queue until its encode+search is done; the queue also keeps a moving average of what one query
costs the batcher (a batch's encode+search time over its size). A request is refused at once
(503 + Retry-After, before its body is even validated) when the queue is full or when the queries
ahead of it, at that cost, would not finish inside its deadline: under overload the excess is shed
and the admitted requests keep their latency, instead of every request queueing until all of them
are late. The work ahead is counted from when the batcher began it (the last batch's end, or the
moment the queue stopped being empty): what is already done on the batch in progress is not
counted again.

A ``/retrieve/batch`` is one admission unit: admitted or shed as a whole, on what waits ahead of it
(as a single query would be), then it holds one place per item until each item knows whether it
needs one (a cache hit or a query another request is already computing gives its place back). Its
deadline is the server's plus the predicted work of its items beyond the first (a caller's
``x-crops-deadline-ms`` stays a hard bound), so a batch is never refused or timed out merely for
having several items.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from core.errors import CropsError, ErrorKind
from core.logs import ExposureRecord
from core.normalize import normalize_text
from service.cache import embedding_key, result_key
from service.runtime import Job
from service.state import ServiceState

DEADLINE_HEADER = "x-crops-deadline-ms"
BATCH_PATH = "/retrieve/batch"
_EWMA = 0.1  # weight of the newest batch in the per-query cost average
_INITIAL_COST_S = 0.003  # before the first batch: a few ms, what one CPU query costs


class Admission:
    """Bounded queue of cache misses with a deadline-aware shed; two lanes, as the batcher runs them.

    ``queued``: places held by ``/retrieve`` misses; ``bulk``: places held by ``/retrieve/batch`` items.
    The batcher takes single queries first and at most ``bulk_slice`` bulk items per batch, so a single
    query waits behind the singles queued and at most one slice of bulk items; a batch waits behind
    everything queued.
    """

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.max_queue = state.settings.max_queue
        self.bulk_slice = max(1, state.settings.bulk_slice)
        self.metrics = state.metrics
        self.queued = 0
        self.bulk = 0
        self.cost_s = _INITIAL_COST_S
        self.since = 0.0  # when the batcher began the work now queued (perf_counter)

    def ahead(self, bulk: bool) -> int:
        """Queued misses a new single query (``bulk=False``) or a new batch would wait behind."""
        return self.queued + self.bulk if bulk else self.queued + min(self.bulk, self.bulk_slice)

    def check(self, deadline_at: float, bulk: bool = False, n: int = 1) -> None:
        """Refuse (OVERLOADED) when the lane is full or ``n`` new misses would finish past ``deadline_at``."""
        lane = self.bulk if bulk else self.queued
        if lane >= self.max_queue:
            self.metrics.shed.labels(reason="queue_full").inc()
            raise CropsError(ErrorKind.OVERLOADED, f"overloaded: {lane} queries queued; retry shortly")
        ahead = self.ahead(bulk)
        # An empty queue always admits: nothing ahead to wait for, and a shed-only server would never
        # measure a batch again to correct a cost estimate that once ran high.
        if ahead and self.finish(ahead, n) > deadline_at:
            self.metrics.shed.labels(reason="predicted").inc()
            raise CropsError(
                ErrorKind.OVERLOADED,
                f"overloaded: {ahead} queries ahead would not finish inside the deadline; retry shortly",
            )

    def finish(self, ahead: int, n: int) -> float:
        """When ``n`` more queries would be done behind ``ahead`` queued ones (perf_counter)."""
        now = time.perf_counter()
        left = max(0.0, ahead * self.cost_s / self.state.view.batch_slots - (now - self.since))
        return now + left + n * self.cost_s

    def _start(self) -> None:
        if self.queued + self.bulk == 0:  # the batcher starts on it at once
            self.since = time.perf_counter()

    def enter(self, deadline_at: float) -> None:
        """One ``/retrieve`` miss: checked, then holds a place until its encode+search is done."""
        self.check(deadline_at)
        self._start()
        self.queued += 1
        self.metrics.queued.inc()

    def enter_batch(self, n: int, deadline_at: float) -> Places:
        """A ``/retrieve/batch`` of ``n`` items, checked as one unit; it holds ``n`` places."""
        self.check(deadline_at, bulk=True, n=n)
        self._start()
        self.bulk += n
        self.metrics.queued.inc(n)
        return Places(self, n)

    def leave(self, bulk: bool = False, n: int = 1, finished: bool = False) -> None:
        """Give places back; ``finished``: their encode+search ended, so the batcher begins the next batch now."""
        if finished:
            self.since = time.perf_counter()
        if bulk:
            self.bulk -= n
        else:
            self.queued -= n
        self.metrics.queued.dec(n)

    def observe(self, batch_ms: float, batch: int) -> None:
        """One finished batch: update the per-query cost."""
        self.cost_s += _EWMA * (batch_ms / 1e3 / max(1, batch) - self.cost_s)


class Places:
    """The places an admitted ``/retrieve/batch`` holds, one per item until the item knows what it needs."""

    def __init__(self, admission: Admission, n: int) -> None:
        self.admission = admission
        self.left = n

    def take(self) -> None:
        """Hand one place to a queued encode+search (whose end gives it back)."""
        if self.left > 0:
            self.left -= 1
        else:  # not reached (each item takes at most one of its batch's places); keep the count balanced
            self.admission.bulk += 1
            self.admission.metrics.queued.inc()

    def give_back(self, n: int = 1) -> None:
        """An item needs no place (cache hit, a query already being computed, an error), or the batch ended."""
        n = min(n, self.left)
        if n > 0:
            self.left -= n
            self.admission.leave(bulk=True, n=n)

    def close(self) -> None:
        self.give_back(self.left)


class RetrieveUseCase:
    """Top-k candidates for queries, from the arm each unit is assigned to."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.metrics = state.metrics
        self.admission = Admission(state)
        self.deadline_s = state.settings.deadline_ms / 1000.0
        self._pending: dict[str, Job] = {}  # single flight: the queued job of each result key
        self._ok = {e: self.metrics.requests.labels(endpoint=e, status="200") for e in ("/retrieve", "/retrieve/batch")}

    def deadline(self, t0: float, asked_ms: str | None, extra_s: float = 0.0) -> float:
        """The request's deadline: the server's (plus ``extra_s``), or less when the caller asks for less."""
        budget = self.deadline_s + extra_s
        if asked_ms:
            try:
                budget = min(budget, max(0.0, float(asked_ms)) / 1000.0)
            except ValueError:
                raise CropsError(ErrorKind.INVALID_INPUT, "x-crops-deadline-ms: not a number") from None
        return t0 + budget

    def admit_or_shed(self, headers: Callable[[str], str | None], path: str) -> None:
        """The cheap check before the body is read: shed at once what could not be served in time.

        A batch's size is not known yet: it is checked as one query here, as a unit once parsed."""
        bulk = path == BATCH_PATH
        self.admission.check(self.deadline(time.perf_counter(), headers(DEADLINE_HEADER)), bulk=bulk)

    async def one(self, req: Any, force: str | None, t0: float, deadline_at: float) -> dict[str, Any]:
        out = await self._serve(req, force, t0, deadline_at, None)
        self._ok["/retrieve"].inc()
        return out

    async def many(self, items: list[Any], force: str | None, t0: float, asked_ms: str | None) -> list[dict[str, Any]]:
        """A batch: one admission unit; its deadline grows by its items' predicted work beyond the first."""
        n = len(items)
        deadline_at = self.deadline(t0, asked_ms, extra_s=(n - 1) * self.admission.cost_s)
        places = self.admission.enter_batch(n, deadline_at)
        tasks = [asyncio.ensure_future(self._serve(i, force, t0, deadline_at, places)) for i in items]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:  # the batch fails as a whole: stop its other items before giving places back
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            places.close()
        self._ok["/retrieve/batch"].inc()
        return list(results)

    async def _serve(
        self, req: Any, force: str | None, t0: float, deadline_at: float, places: Places | None
    ) -> dict[str, Any]:
        state = self.state
        view = state.view  # one consistent snapshot for the whole request
        t_start = time.perf_counter()  # == t0 for /retrieve; later for the items of a batch
        rid = req.request_id or os.urandom(12).hex()
        unit = req.user_id or rid
        norm = normalize_text(req.query)
        if not norm:
            raise CropsError(ErrorKind.INVALID_INPUT, "query: nothing left to search after normalisation")
        t_norm = time.perf_counter()
        a = view.assigner.assign(unit, force)
        rt = view.runtimes[a.bundle]
        key = result_key(rt.content_id, a.nprobe, norm)
        cached = await state.cache.get_result(key)
        t_cache = time.perf_counter()
        queue_ms = encode_ms = search_ms = 0.0
        if cached is not None:
            ids, scores = cached
            if places is not None:
                places.give_back()
        else:
            jr = await self._encode_search(rt, key, norm, a.nprobe, deadline_at, places)
            if state.recall.enabled:
                state.recall.offer(a.bundle, rt, jr.vector, jr.ids, a.nprobe)
            ids, scores = jr.ids, jr.scores
            queue_ms, encode_ms, search_ms = jr.queue_ms, jr.encode_ms, jr.search_ms
        ids, scores = ids[: req.top_k], scores[: req.top_k]
        t_end = time.perf_counter()
        timings = {
            "normalize_ms": round((t_norm - t_start) * 1e3, 3),
            "cache_ms": round((t_cache - t_norm) * 1e3, 3),
            "queue_ms": round(queue_ms, 3),
            "encode_ms": round(encode_ms, 3),
            "search_ms": round(search_ms, 3),
            "total_ms": round((t_end - t0) * 1e3, 3),
            "cached": cached is not None,
        }
        st = self.metrics.stage(a.arm)
        st["normalize"].observe(t_norm - t_start)
        st["cache"].observe(t_cache - t_norm)
        st["total"].observe(t_end - t0)
        if cached is None:
            st["queue"].observe(queue_ms / 1e3)
            st["encode"].observe(encode_ms / 1e3)
            st["search"].observe(search_ms / 1e3)
        if state.exposure.enabled:
            state.exposure.record(
                ExposureRecord(
                    request_id=rid,
                    unit=unit,
                    user_id=req.user_id,
                    ts=int(time.time() * 1000),
                    query=req.query,
                    normalized_query=norm,
                    arm=a.arm,
                    experiments=[list(p) for p in a.experiments],
                    bundle_id=rt.bundle_id,
                    content_id=rt.content_id,
                    video_ids=ids,
                    scores=scores,
                )
            )
        return {
            "request_id": rid,
            "arm": a.arm,
            "bundle_id": rt.bundle_id,
            "candidates": [{"video_id": i, "score": s} for i, s in zip(ids, scores, strict=True)],
            "timings": timings,
        }

    async def _encode_search(
        self, rt: Any, key: str, norm: str, nprobe: int | None, deadline_at: float, places: Places | None
    ) -> Any:
        """Single flight: concurrent misses of one key share one queued encode+search.

        ``places``: the item of an admitted batch takes one of its places instead of being checked."""
        state = self.state
        job = self._pending.get(key)
        owner = job is None
        ekey = embedding_key(rt.content_id, norm)
        vec = None
        bulk = places is not None
        if job is None:
            if places is None:
                self.admission.enter(deadline_at)
            else:
                places.take()
            vec = state.cache.get_embedding(ekey)
            job = rt.submit(norm, vec, nprobe, bulk=bulk, deadline=deadline_at)
            self._pending[key] = job
            job.future.add_done_callback(lambda f: self._done(key, f, bulk))
        else:
            job.deadline = max(job.deadline, deadline_at)  # the batcher computes it while anyone waits
            if places is not None:
                places.give_back()  # another request computes this query: no place of its own
        try:
            # shield: one waiter's deadline must not cancel the others' shared future
            jr = await asyncio.wait_for(asyncio.shield(job.future), deadline_at - time.perf_counter())
        except asyncio.TimeoutError:
            self.metrics.shed.labels(reason="deadline").inc()
            raise CropsError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded while queued; retry shortly") from None
        except CropsError as exc:
            if exc.kind is ErrorKind.DEADLINE_EXCEEDED:  # the batcher dropped it past every deadline
                self.metrics.shed.labels(reason="deadline").inc()
            raise
        if owner:
            if vec is None:
                state.cache.put_embedding(ekey, jr.vector)
            await state.cache.put_result(key, (jr.ids, jr.scores))
        return jr

    def _done(self, key: str, fut: asyncio.Future[Any], bulk: bool) -> None:
        self._pending.pop(key, None)
        self.admission.leave(bulk=bulk, finished=True)
        if not fut.cancelled() and fut.exception() is None:
            jr = fut.result()
            self.admission.observe(jr.encode_ms + jr.search_ms, jr.batch)
