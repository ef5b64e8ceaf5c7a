"""A loaded bundle with its encoder micro-batcher.

Requests submit jobs and await an asyncio future. Each of ``batch_slots`` slot threads, when free,
takes the first queued job, gathers whatever else arrives within ``max_wait_ms`` (up to
``max_batch``), encodes the batch in ONE onnxruntime call and searches each nprobe group in ONE faiss
call, off the event loop (onnxruntime and faiss release the GIL). One slot gathers at a time; the
others wait for it or compute. Batches take single queries first and at most ``bulk_slice`` items of
/retrieve/batch requests. With two slots (the default on CPU) a query that arrives while a batch
runs starts at once on the other core instead of waiting for it; when both slots are busy, queries
queue and the next free slot takes them as one batch, so batching still carries the load at
saturation. Each call uses one intra-op thread; a GPU bundle runs one batch at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import CropsError, ErrorKind
from core.manifest import MANIFEST_NAME
from service.engine import Retriever

log = logging.getLogger("service.runtime")

SEARCH_K = 100  # results are computed (and cached) at the maximum top_k, sliced per request
WARMUP = ("cat video", "how to cook pasta", "minecraft speedrun", "guitar cover")


@dataclass
class Job:
    query: str  # normalised
    vector: np.ndarray | None
    nprobe: int | None
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float
    bulk: bool = False  # an item of /retrieve/batch: yields to single queries
    # perf_counter after which no waiter wants the answer (the latest deadline of the requests sharing
    # it); the batcher drops a job past it instead of computing an answer nobody will read
    deadline: float = math.inf


@dataclass
class JobResult:
    ids: list[str]
    scores: list[float]
    vector: np.ndarray
    queue_ms: float
    encode_ms: float
    search_ms: float
    batch: int


def _resolve(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():  # cancelled by its deadline
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def manifest_sha(path: Path) -> str | None:
    """sha256 of a bundle's manifest.json (None when unreadable): its identity on disk."""
    try:
        return hashlib.sha256((path / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        return None


class BundleRuntime:
    """One bundle (Retriever) plus its batcher thread."""

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        intra_op_threads: int = 1,
        use_gpu: bool | None = None,
        precision: str | None = None,
        verify: bool = True,
        on_batch: Any = None,
        bulk_slice: int = 4,
        batch_slots: int = 2,
    ) -> None:
        self.path = Path(path)
        self.manifest_sha = manifest_sha(self.path)
        self.retriever = Retriever(
            self.path, intra_op_threads=intra_op_threads, use_gpu=use_gpu, verify=verify, precision=precision
        )
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._q: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Batches in flight at once, one slot thread each. A GPU index is not searched from two threads at once.
        self.batch_slots = 1 if self.retriever.on_gpu else max(1, batch_slots)
        self._threads: list[threading.Thread] = []
        # Held by the one slot gathering the next batch (and while it blocks for the first job): the
        # lanes below are touched under it only.
        self._gather = threading.Lock()
        self._ending = False  # the stop marker was taken: slots finish what is queued, then end
        self._stopped = False
        self.bulk_slice = max(1, bulk_slice)
        # Jobs waiting for a batch (under self._gather): single queries, /retrieve/batch items.
        self._pending: list[Job] = []
        self._bulk: list[Job] = []
        self.cost_s = 0.0  # per-query wall time of encode + search, moving average over batches
        self.loaded_at = time.time()

    @property
    def bundle_id(self) -> str:
        return self.retriever.bundle_id

    @property
    def content_id(self) -> str:
        """Identity of what the results depend on (query tower + index + id map checksums)."""
        return self.retriever.content_id

    def warm_up(self, n: int) -> None:
        """Run a few queries end to end (first calls allocate arenas); fails loudly on a broken bundle."""
        if n <= 0:
            return
        queries = [WARMUP[i % len(WARMUP)] for i in range(n)]
        vecs = self.retriever.encode(queries)
        if vecs.shape != (n, self.retriever.encoder.dim) or not np.isfinite(vecs).all():
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{self.path}: warm-up produced invalid embeddings")
        res = self.retriever.search_vectors(vecs[:1], SEARCH_K)
        if self.retriever.index.ntotal > 0 and not res[0].ids:
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{self.path}: warm-up search returned nothing")
        self.retriever.encode(queries[:1])

    def start(self) -> None:
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._slot, name=f"batch-{self.bundle_id}-{i}", daemon=True)
                for i in range(self.batch_slots)
            ]
            for t in self._threads:
                t.start()

    def stop(self) -> None:
        """Finish queued jobs, then end the slot threads. Jobs submitted later run inline in a pool thread."""
        self._stopped = True
        self._q.put(None)

    def submit(
        self, query: str, vector: np.ndarray | None, nprobe: int | None, *, bulk: bool = False,
        deadline: float = math.inf,
    ) -> Job:
        """Queue one query; ``bulk`` (an item of /retrieve/batch) lets single queries go first. The
        caller awaits ``job.future`` and may push ``job.deadline`` later for another waiter."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        job = Job(query, vector, nprobe, fut, loop, time.perf_counter(), bulk, deadline)
        if self._stopped or not self._threads:
            # A request that picked this runtime just before a swap: serve it anyway.
            loop.run_in_executor(None, self._process, [job])
        else:
            self._q.put(job)
        return job

    def _add(self, job: Job) -> None:
        (self._bulk if job.bulk else self._pending).append(job)

    def _take(self) -> list[Job]:
        """The next batch: single queries first (up to max_batch), then at most ``bulk_slice`` bulk items,
        cut to what can finish inside its items' deadlines.

        A /retrieve/batch of 16 misses is 16 encodes; run as one batch it would stall every single query
        behind it for that long. In slices, singles that arrive meanwhile go ahead at the next batch.

        Deadlines: every item of a batch is answered when the whole batch is done, so a batch of n takes
        about n x cost for each of them. Under overload the batch filled to max_batch (16 x 3.4 ms on the
        1M bench index) and outlasted the 50 ms deadline, so nearly every computed answer came too late
        (one worker offered 400 req/s answered 26 of them). Jobs that cannot finish even alone are
        dropped uncomputed (their requests get 503); the batch is cut so that its last item still
        meets the earliest deadline in it; the rest wait for the next batch.
        """
        now = time.perf_counter()
        self._drop_doomed(now)
        n = min(len(self._pending), self.max_batch)
        batch = self._pending[:n]
        del self._pending[:n]
        room = min(self.max_batch - n, self.bulk_slice)
        if room > 0 and self._bulk:
            batch += self._bulk[:room]
            del self._bulk[:room]
        fit = len(batch)
        if self.cost_s > 0:
            earliest = math.inf
            for k, job in enumerate(batch, 1):
                earliest = min(earliest, job.deadline)
                if now + k * self.cost_s > earliest:
                    fit = max(1, k - 1)
                    break
        if fit < len(batch):  # back to the front of their lanes, in order
            rest = batch[fit:]
            self._pending[:0] = [j for j in rest if not j.bulk]
            self._bulk[:0] = [j for j in rest if j.bulk]
            batch = batch[:fit]
        return batch

    def _drop_doomed(self, now: float) -> None:
        """Answer 503 now to queued jobs that would miss their deadline even in a batch of one."""
        cutoff = now + self.cost_s
        for lane in (self._pending, self._bulk):
            if any(job.deadline < cutoff for job in lane):
                err = CropsError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded while queued; retry shortly")
                for job in lane:
                    if job.deadline < cutoff:
                        job.loop.call_soon_threadsafe(_resolve, job.future, None, err)
                lane[:] = [job for job in lane if job.deadline >= cutoff]

    def _slot(self) -> None:
        """One slot: gather the next batch (one slot at a time), compute it, again; after the stop
        marker, end once nothing is queued (batches in flight on other slots finish on their own)."""
        while True:
            with self._gather:
                batch = self._next_batch()
            if batch is None:
                return
            if batch:  # empty when every queued job was past saving
                try:
                    self._process(batch)
                except Exception:  # e.g. a waiter's event loop already closed: keep the slot alive
                    log.exception("batch of %d: answering failed", len(batch))

    def _next_batch(self) -> list[Job] | None:
        """Block for the first job unless some are waiting, gather what else is queued (up to
        max_wait_ms), take the batch; None once stopping with nothing left."""
        if not (self._pending or self._bulk):
            job = None if self._ending else self._q.get()
            if job is None:
                self._ending = True
                return None
            self._add(job)
        deadline = time.perf_counter() + self.max_wait_s
        while not self._ending:
            try:
                remaining = deadline - time.perf_counter()
                if remaining > 0 and len(self._pending) < self.max_batch:
                    nxt = self._q.get(timeout=remaining)
                else:
                    nxt = self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._ending = True  # finish what is queued, then end
            else:
                self._add(nxt)
        return self._take()

    def _process(self, batch: list[Job]) -> None:
        t0 = time.perf_counter()
        try:
            todo = [i for i, j in enumerate(batch) if j.vector is None]
            vectors: list[np.ndarray | None] = [j.vector for j in batch]
            if todo:
                enc = self.retriever.encode([batch[i].query for i in todo])
                for row, i in enumerate(todo):
                    vectors[i] = enc[row]
            t1 = time.perf_counter()
            mat = np.stack([v for v in vectors if v is not None])
            groups: dict[int | None, list[int]] = {}
            for i, j in enumerate(batch):
                groups.setdefault(j.nprobe, []).append(i)
            results: list[Any] = [None] * len(batch)
            for nprobe, idx in groups.items():
                found = self.retriever.search_vectors(mat[idx], SEARCH_K, nprobe=nprobe)
                for i, res in zip(idx, found, strict=True):
                    results[i] = res
            t2 = time.perf_counter()
        except Exception as exc:
            err = (
                exc
                if isinstance(exc, CropsError)
                else CropsError(ErrorKind.BACKEND, f"retrieval failed: {type(exc).__name__}: {exc}")
            )
            log.exception("batch of %d failed", len(batch))
            for j in batch:
                j.loop.call_soon_threadsafe(_resolve, j.future, None, err)
            return
        if self.on_batch is not None:
            self.on_batch(len(todo))
        enc_ms = (t1 - t0) * 1e3 if todo else 0.0
        search_ms = (t2 - t1) * 1e3
        per_query = (t2 - t0) / len(batch)
        self.cost_s = per_query if self.cost_s == 0 else self.cost_s + 0.2 * (per_query - self.cost_s)
        for i, j in enumerate(batch):
            res = results[i]
            out = JobResult(
                res.ids,
                res.scores,
                mat[i],
                (t0 - j.enqueued) * 1e3,
                enc_ms if j.vector is None else 0.0,
                search_ms,
                len(batch),
            )
            j.loop.call_soon_threadsafe(_resolve, j.future, out, None)

    def summary(self) -> dict[str, Any]:
        m = self.retriever.manifest
        model, index = m.model, m.index
        assert model is not None and index is not None
        return {
            "bundle_id": m.bundle_id,
            "path": str(self.path),
            "created_at": m.created_at.isoformat(),
            "git_sha": m.git_sha,
            "model_id": model.model_id,
            "base_model": model.base_model,
            "embedding_dim": model.embedding_dim,
            "max_query_tokens": model.max_query_tokens,
            "normalization_version": model.normalization_version,
            "parity_max_abs_err": model.parity_max_abs_err,
            "precision": self.retriever.precision,
            "content_id": self.content_id,
            "providers": self.retriever.encoder.providers,
            "index_factory": index.factory,
            "ntotal": index.ntotal,
            "nprobe": self.retriever.nprobe,
            "recall_at_100": index.recall_at_100,
            "faiss_gpu": self.retriever.on_gpu,
            "batch_slots": self.batch_slots,
            "training": m.training,
            "loaded_at": self.loaded_at,
        }
