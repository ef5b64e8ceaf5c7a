"""Prometheus metrics (``crops_`` prefix), one registry per app so several apps can share a process.

With several uvicorn workers set ``PROMETHEUS_MULTIPROC_DIR`` (``crops serve --workers N`` does):
every worker writes its values there and ``/metrics`` aggregates them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

STAGES = ("normalize", "cache", "queue", "encode", "search", "total")
# 0.25 ms .. 5 s: encode+search of one query is a few ms on CPU, sub-ms on GPU.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


def _multiproc() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """All service metrics. ``stage(arm)`` returns cached histogram children (labels() is not free)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        mp = _multiproc()
        self.latency = Histogram(
            "crops_request_latency_seconds",
            "Request latency by arm and stage",
            ["arm", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "crops_requests", "Requests answered, by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.errors = Counter("crops_errors", "Errors by kind", ["kind"], registry=r)
        self.cache = Counter(
            "crops_cache", "Cache lookups by cache and result (hit/miss)", ["cache", "result"], registry=r
        )
        self.in_flight = Gauge(
            "crops_in_flight",
            "Requests in progress",
            registry=r,
            multiprocess_mode="livesum" if mp else "all",
        )
        self.shed = Counter(
            "crops_shed",
            "Requests refused with 503, by reason (queue_full, predicted: could not finish in its deadline; "
            "deadline: waited past it)",
            ["reason"],
            registry=r,
        )
        self.queued = Gauge(
            "crops_queued",
            "Admitted requests waiting for or in encode+search",
            registry=r,
            multiprocess_mode="livesum" if mp else "all",
        )
        self.batch_size = Histogram(
            "crops_encoder_batch_size",
            "Queries per encoder micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.config_version = Gauge(
            "crops_config_version",
            "Version of the A/B config being served",
            registry=r,
            multiprocess_mode="max" if mp else "all",
        )
        self.config_updates = Counter(
            "crops_config_updates", "A/B config updates by result (applied/rejected)", ["result"], registry=r
        )
        self.bundle_info = Gauge(
            "crops_bundle_info",
            "Bundles served (value 1), by config name",
            ["bundle", "bundle_id", "model_id", "factory", "precision", "device"],
            registry=r,
            multiprocess_mode="max" if mp else "all",
        )
        self.reloads = Counter("crops_reloads", "Bundle reloads by result (ok/failed)", ["result"], registry=r)
        self.redis_up = Gauge(
            "crops_redis_up",
            "1 when Redis answers, 0 when it is down or unset",
            registry=r,
            multiprocess_mode="min" if mp else "all",
        )
        self.redis_errors = Counter(
            "crops_redis_errors", "Redis operations that failed, by operation", ["op"], registry=r
        )
        self.exposures = Counter(
            "crops_exposures",
            "Exposure records by result (written, spooled while Redis is down, replayed, dropped)",
            ["result"],
            registry=r,
        )
        self.feedback = Counter(
            "crops_feedback",
            "Feedback events by result (written, spooled while Redis is down, replayed, dropped)",
            ["result"],
            registry=r,
        )
        self.online_recall = Gauge(
            "crops_online_recall_at_100",
            "Mean recall@100 against exact search over the last sampled live queries, by bundle",
            ["bundle"],
            registry=r,
            multiprocess_mode="livemostrecent" if mp else "all",
        )
        self._stage_children: dict[str, dict[str, Any]] = {}

    def stage(self, arm: str) -> dict[str, Any]:
        children = self._stage_children.get(arm)
        if children is None:
            children = {s: self.latency.labels(arm=arm, stage=s) for s in STAGES}
            self._stage_children[arm] = children
        return children

    def set_bundles(self, rows: list[dict[str, str]]) -> None:
        if not _multiproc():  # multi-process gauges cannot be cleared; each worker's rows are its own
            self.bundle_info.clear()
        for row in rows:
            self.bundle_info.labels(**row).set(1)

    def render(self) -> tuple[bytes, str]:
        if _multiproc():
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
