"""What the service serves now (a View swapped atomically) and how it converges to the desired state.

A request reads ``state.view`` once and uses that object to the end, so a config update or a bundle
reload (build a new View off the event loop, verify and warm it, then one attribute assignment)
never mixes an old assignment with a new bundle. The desired config lives in a ``DesiredStore``
(Redis or a shared folder); every worker polls it, converges and reports. A failed update or reload
leaves the old View serving and records why (``/info``, logs, metrics, the worker's report).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import CropsError, ErrorKind
from service.cache import QueryCache
from service.desired import DesiredStore, worker_name
from service.experiments import (
    Assigner,
    ExperimentConfig,
    dump_config,
    load_config_file,
    parse_config,
    single_bundle_config,
)
from service.exposure import FEEDBACK_STREAM, STREAM, DurableLog
from service.heap import freeze_heap, frozen_objects, huge_page_mib
from service.metrics import Metrics
from service.recall import RecallMonitor
from service.redis_link import RedisLink
from service.runtime import BundleRuntime, manifest_sha
from service.settings import ServiceSettings

log = logging.getLogger("service")

STOP_GRACE_S = 5.0  # old runtimes finish their queue; late requests run inline meanwhile


@dataclass
class View:
    config: ExperimentConfig
    assigner: Assigner
    runtimes: dict[str, BundleRuntime]  # config bundle name -> runtime
    source: str

    @functools.cached_property
    def batch_slots(self) -> int:
        """Batches running at once: the fewest of any loaded bundle (the admission queue drains that fast)."""
        return min((rt.batch_slots for rt in self.runtimes.values()), default=1)


@dataclass
class Event:
    ok: bool
    what: str
    reason: str | None = None
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "what": self.what, "reason": self.reason, "at": self.at}


class ServiceState:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.redis: RedisLink | None = None
        if settings.redis_url:
            self.redis = RedisLink(
                settings.redis_url,
                timeout_ms=settings.redis_timeout_ms,
                retry_s=settings.redis_retry_s,
                prefix=settings.redis_prefix,
                metrics=self.metrics,
            )
        else:
            self.metrics.redis_up.set(0)
        use_redis_cache = settings.cache == "redis" or (settings.cache == "auto" and self.redis is not None)
        self.cache = QueryCache(
            size=settings.cache_size,
            ttl_s=settings.cache_ttl_s,
            metrics=self.metrics,
            redis=self.redis if use_redis_cache else None,
            enabled=settings.cache != "none",
        )
        spool = settings.spool_dir
        self.exposure = DurableLog(
            STREAM,
            counter=self.metrics.exposures,
            redis=self.redis if settings.exposure_stream else None,
            stream_maxlen=settings.exposure_stream_maxlen,
            jsonl=settings.exposure_jsonl,
            jsonl_max_bytes=int(settings.exposure_jsonl_max_mb * (1 << 20)),
            spool_dir=spool,
            max_pending=settings.exposure_queue,
        )
        self.feedback = DurableLog(
            FEEDBACK_STREAM,
            counter=self.metrics.feedback,
            redis=self.redis,
            stream_maxlen=settings.exposure_stream_maxlen,
            # without Redis or a configured file, events still land somewhere durable
            jsonl=settings.feedback_jsonl
            or (spool / "feedback.jsonl" if self.redis is None and spool is not None else None),
            jsonl_max_bytes=int(settings.exposure_jsonl_max_mb * (1 << 20)),
            spool_dir=spool,
            max_pending=settings.exposure_queue,
        )
        self.desired = DesiredStore(
            redis=self.redis, state_dir=settings.state_dir, stale_s=max(3 * settings.config_poll_s, 3.0)
        )
        self.recall = RecallMonitor(
            share=settings.recall_sample, window=settings.recall_window, gauge=self.metrics.online_recall
        )
        self.worker = worker_name()
        self.draining = False
        self.last_reload: Event | None = None
        self.last_config: Event | None = None
        self._rejected_raw: bytes | str | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        cfg, source = self._initial_config()
        runtimes = self._load_runtimes(cfg, reuse={})
        self.view = View(cfg, Assigner(cfg), runtimes, source)
        self._publish(self.view)

    # ---- building views -------------------------------------------------------------------------
    def _initial_config(self) -> tuple[ExperimentConfig, str]:
        s = self.settings
        if s.experiments is not None:
            if s.bundle is not None:
                log.warning("both CROPS_EXPERIMENTS and CROPS_BUNDLE set: serving the experiment config")
            return load_config_file(s.experiments), f"file:{s.experiments}"
        if s.bundle is not None:
            return single_bundle_config(s.bundle), f"bundle:{s.bundle}"
        raise CropsError(ErrorKind.CONFIG_INVALID, "nothing to serve: set CROPS_BUNDLE or CROPS_EXPERIMENTS")

    def _new_runtime(self, path: Path) -> BundleRuntime:
        s = self.settings
        rt = BundleRuntime(
            path,
            max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms,
            batch_slots=s.batch_slots,
            intra_op_threads=s.intra_op_threads,
            use_gpu=s.use_gpu,
            precision=s.encoder_precision,
            verify=s.verify_checksums,
            on_batch=self.metrics.batch_size.observe,
            bulk_slice=s.bulk_slice,
        )
        rt.warm_up(s.warmup_queries)
        return rt

    def _load_runtimes(
        self, cfg: ExperimentConfig, reuse: dict[str, BundleRuntime], force: set[str] | None = None
    ) -> dict[str, BundleRuntime]:
        """Runtimes for every bundle the config names; reuse loaded ones unless named in ``force``."""
        by_path = {str(rt.path): rt for rt in reuse.values()}
        out: dict[str, BundleRuntime] = {}
        for name, path in cfg.bundles.items():
            old = by_path.get(str(Path(path)))
            # reuse only while the folder still holds the same manifest (a bundle replaced in place reloads)
            if old is not None and not (force and name in force) and old.manifest_sha == manifest_sha(Path(path)):
                out[name] = old
                continue
            try:
                out[name] = self._new_runtime(Path(path))
            except CropsError as exc:
                raise CropsError(exc.kind, f"bundle {name!r}: {exc.message}") from exc
            except Exception as exc:  # faiss/onnxruntime/OS raise untyped errors on corrupt files or bad paths
                raise CropsError(ErrorKind.BUNDLE_INVALID, f"bundle {name!r} at {path}: {exc}") from exc
        return out

    def _publish(self, view: View) -> None:
        old = getattr(self, "_published", None)
        self.view = view
        self._published = view
        for rt in view.runtimes.values():
            rt.start()
        if old is not None and {r.content_id for r in old.runtimes.values()} != {
            r.content_id for r in view.runtimes.values()
        }:
            # keys hold the content id, so old entries could never be served; purging frees their memory
            self.cache.purge()
        self.metrics.config_version.set(view.config.version)
        self.metrics.set_bundles(
            [
                {
                    "bundle": name,
                    "bundle_id": rt.bundle_id,
                    "model_id": rt.retriever.manifest.model.model_id if rt.retriever.manifest.model else "",
                    "factory": rt.retriever.manifest.index.factory if rt.retriever.manifest.index else "",
                    "precision": rt.retriever.precision or "fp32",
                    "device": "gpu" if rt.retriever.on_gpu else "cpu",
                }
                for name, rt in view.runtimes.items()
            ]
        )
        if old is not None:
            if self.settings.gc_freeze:
                freeze_heap(collect=False)  # the new bundles' objects join the frozen heap at once
            live = {id(rt) for rt in view.runtimes.values()}
            retired = [rt for rt in old.runtimes.values() if id(rt) not in live]
            if retired:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    for rt in retired:
                        rt.stop()
                else:
                    for rt in retired:
                        loop.call_later(STOP_GRACE_S, rt.stop)
                    if self.settings.gc_freeze:
                        # once the old bundles are unreferenced: one full collection reclaims any cycles
                        # among their frozen objects (a pause of a full collection, once per reload)
                        loop.call_later(2 * STOP_GRACE_S, self._refreeze)

    # ---- converging to the desired state -----------------------------------------------------------
    async def apply_config(self, cfg: ExperimentConfig, source: str) -> None:
        """Load what ``cfg`` needs off the loop, then swap; raises (keeping the old view) on failure."""
        async with self._lock:
            current = self.view
            if cfg.version <= current.config.version and source != "admin":
                return
            try:
                runtimes = await asyncio.to_thread(self._load_runtimes, cfg, current.runtimes)
            except CropsError as exc:
                self._config_rejected(f"config v{cfg.version} from {source}", exc.message)
                raise
            self._publish(View(cfg, Assigner(cfg), runtimes, source))
            self.last_config = Event(True, f"config v{cfg.version} from {source}")
            self.metrics.config_updates.labels(result="applied").inc()
            log.warning(
                "A/B config v%d from %s applied (arms: %s)",
                cfg.version,
                source,
                ", ".join(self.view.assigner.arm_names),
            )

    def _config_rejected(self, what: str, reason: str) -> None:
        self.last_config = Event(False, what, reason)
        self.metrics.config_updates.labels(result="rejected").inc()
        log.error("%s rejected, keeping v%d: %s", what, self.view.config.version, reason)

    async def poll_config_once(self) -> None:
        """Read the desired config; apply it when its version is newer and it is valid; report."""
        raw = await self.desired.read()
        if raw is not None and raw != self._rejected_raw:
            base = self.settings.experiments.resolve().parent if self.settings.experiments else None
            where = f"desired state ({self.desired.where()})"
            try:
                cfg = parse_config(raw, base_dir=base, source=where)
            except CropsError as exc:
                self._rejected_raw = raw
                self._config_rejected(where, exc.message)
            else:
                if cfg.version > self.view.config.version:
                    try:
                        await self.apply_config(cfg, f"desired:{self.desired.where()}")
                    except CropsError:
                        self._rejected_raw = raw
        await self.report()

    async def report(self) -> None:
        """Tell the other workers what this one serves (heartbeat)."""
        v = self.view
        failed = self.last_config if self.last_config is not None and not self.last_config.ok else None
        await self.desired.report(
            {
                "worker": self.worker,
                "version": v.config.version,
                "content_ids": {n: rt.content_id for n, rt in v.runtimes.items()},
                "error": failed.as_dict() if failed else None,
                "draining": self.draining,
            }
        )

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.poll_config_once()
            except Exception:  # the poller must never die; the failure is logged with its traceback
                log.exception("config poll failed")
            await asyncio.sleep(self.settings.config_poll_s)

    async def _publish_desired(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """Write ``cfg`` as the desired state, then wait (bounded) for every live worker to converge."""
        stored = await self.desired.write(dump_config(cfg))
        await self.report()
        deadline = time.monotonic() + self.settings.converge_timeout_s
        while True:
            workers = await self.desired.workers()
            rows = {
                name: {
                    "version": w.get("version"),
                    "converged": int(w.get("version", -1)) >= cfg.version,
                    "error": (w.get("error") or {}).get("reason"),
                }
                for name, w in workers.items()
            }
            if all(r["converged"] or r["error"] for r in rows.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(min(0.1, self.settings.config_poll_s))
        return {
            "config_version": cfg.version,
            "desired_state": self.desired.where() if stored else "unreachable: applied on this worker only",
            "workers": rows,
            "converged": stored and all(r["converged"] for r in rows.values()),
        }

    async def push_config(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """Admin: apply a config here, then make it the desired state every worker converges to."""
        if cfg.version <= self.view.config.version:
            raise CropsError(
                ErrorKind.CONFIG_INVALID,
                f"config version {cfg.version} is not newer than the served v{self.view.config.version}",
            )
        await self.apply_config(cfg, "admin")
        return await self._publish_desired(cfg)

    # ---- reload -----------------------------------------------------------------------------------
    async def reload(self, bundle: str | None, path: Path | None) -> dict[str, Any]:
        """Reload one bundle (optionally from a new path) or all: verify and warm here, swap, publish, converge."""
        async with self._lock:
            current = self.view
            names = [bundle] if bundle else list(current.config.bundles)
            for name in names:
                if name not in current.config.bundles:
                    raise CropsError(
                        ErrorKind.NOT_FOUND, f"no bundle {name!r}; known: {sorted(current.config.bundles)}"
                    )
            if path is not None and bundle is None:
                raise CropsError(ErrorKind.INVALID_INPUT, "a new path needs the bundle name it replaces")
            cfg = current.config.model_copy(deep=True)
            if path is not None and bundle is not None:
                try:
                    cfg.bundles[bundle] = str(path.resolve())
                except (OSError, ValueError) as exc:
                    raise CropsError(ErrorKind.INVALID_INPUT, f"path: {exc}") from exc
            # a new version, so that every worker and replica converges to this reload
            cfg.version = current.config.version + 1
            what = f"reload of {', '.join(names)}"
            t0 = time.perf_counter()
            try:
                runtimes = await asyncio.to_thread(self._load_runtimes, cfg, current.runtimes, set(names))
            except CropsError as exc:
                self.last_reload = Event(False, what, exc.message)
                self.metrics.reloads.labels(result="failed").inc()
                log.error("%s refused, still serving the old bundle: %s", what, exc.message)
                raise
            self._publish(View(cfg, Assigner(cfg), runtimes, current.source))
            self.last_reload = Event(True, what)
            self.metrics.reloads.labels(result="ok").inc()
        ids = {n: runtimes[n].bundle_id for n in names}
        log.warning("%s done in %.1f s: %s", what, time.perf_counter() - t0, ids)
        out = await self._publish_desired(cfg)
        return {"reloaded": ids, "seconds": round(time.perf_counter() - t0, 3), **out}

    def _refreeze(self) -> None:
        ms = freeze_heap(collect=True)
        log.info("heap collected and frozen again after a swap (%.0f ms, %d objects)", ms, frozen_objects())

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        for rt in self.view.runtimes.values():
            rt.start()
        if self.settings.gc_freeze:  # bundles loaded and warmed: keep the collector off them
            ms = freeze_heap(collect=True)
            log.info("heap frozen: %d objects (%.0f ms)", frozen_objects(), ms)
        await self.poll_config_once()
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="config-poll"))
        if self.recall.enabled:
            self._tasks.append(asyncio.create_task(self.recall.run(), name="recall-monitor"))
        for durable in (self.exposure, self.feedback):
            if durable.enabled:
                self._tasks.append(asyncio.create_task(durable.run(), name=f"{durable.stream}-writer"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await task
        for rt in self.view.runtimes.values():
            rt.stop()
        if self.redis is not None:
            await self.redis.close()

    def info(self, full: bool) -> dict[str, Any]:
        """What is served; without ``full`` (no admin token) no paths, hosts, errors, git sha or config."""
        v = self.view
        public: dict[str, Any] = {
            "config_version": v.config.version,
            "arms": sorted(v.assigner.arm_names),
            "bundles": {
                name: {"bundle_id": rt.bundle_id, "content_id": rt.content_id} for name, rt in v.runtimes.items()
            },
            "draining": self.draining,
            "worker_pid": os.getpid(),  # which worker answered (each keep-alive connection stays on one)
        }
        if not full:
            return public
        return {
            **public,
            "config_source": v.source,
            "arms": {
                arm: {**row, "bundle_id": v.runtimes[row["bundle"]].bundle_id}
                for arm, row in v.assigner.arm_table().items()
            },
            "bundles": {name: rt.summary() for name, rt in v.runtimes.items()},
            "config": v.assigner.summary(),
            "last_reload": self.last_reload.as_dict() if self.last_reload else None,
            "last_config_update": self.last_config.as_dict() if self.last_config else None,
            "redis": self.redis.info() if self.redis else {"configured": False},
            "desired_state": self.desired.where(),
            "cache": self.cache.info(),
            "online_recall": self.recall.summary(),
            "worker": self.worker,  # which worker answered (each keep-alive connection stays on one)
            "gc_frozen_objects": frozen_objects(),
            "huge_page_mib": huge_page_mib(),  # 0 without GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (service.heap)
            "limits": {
                "max_queue": self.settings.max_queue,
                "deadline_ms": self.settings.deadline_ms,
                "max_batch": self.settings.max_batch,
                "max_wait_ms": self.settings.max_wait_ms,
                "max_query_chars": self.settings.max_query_chars,
            },
        }
