"""Service settings: ``CROPS_*`` environment variables (built by the caller, never at import time)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from core.settings import CropsSettings


class ServiceSettings(CropsSettings):
    """Everything the service reads from its environment.

    Either ``bundle`` (one bundle served as arm ``default``) or ``experiments`` (an A/B config file
    naming several bundles) must be set. With ``redis_url`` the A/B config is also read from Redis
    (hot-updated), the cache gets a shared second level and the exposure log can go to a stream.
    """

    bundle: Path | None = None
    experiments: Path | None = None
    redis_url: str | None = None
    redis_prefix: str = "crops:"
    redis_timeout_ms: float = Field(default=100.0, gt=0, description="per-operation socket timeout")
    redis_retry_s: float = Field(default=1.0, gt=0, description="how long Redis stays marked down after an error")
    config_poll_s: float = Field(default=1.0, gt=0, description="how often the Redis A/B config is polled")
    admin_token: SecretStr | None = None

    # Admission: a bounded queue with a deadline-aware shed instead of unbounded waiting.
    max_queue: int = Field(
        default=32, ge=1, description="requests waiting for encode+search beyond which new ones get 503 at once"
    )
    deadline_ms: float = Field(
        default=50.0,
        gt=0,
        description="per-request deadline: a request predicted to miss it is refused at once (503), one that "
        "waits past it gets 503; a caller may ask for less with the x-crops-deadline-ms header",
    )
    retry_after_s: int = Field(default=1, ge=0)
    # Encoder micro-batching: the batcher waits at most max_wait_ms for up to max_batch queries.
    max_batch: int = Field(default=16, ge=1, le=256)
    max_wait_ms: float = Field(default=0.0, ge=0, le=50)
    batch_slots: int = Field(
        default=2,
        ge=1,
        le=16,
        description="batches a worker encodes and searches at once, one core each (a query does not wait "
        "behind a running batch while a slot is free); run one worker per two cores; a GPU bundle uses 1",
    )
    bulk_slice: int = Field(
        default=4,
        ge=1,
        le=256,
        description="at most this many /retrieve/batch items per encoder batch: "
        "single queries go first, so a big batch request does not stall them",
    )
    intra_op_threads: int = Field(default=1, ge=0, description="onnxruntime threads per worker (0 = all cores)")
    use_gpu: bool | None = None
    encoder_precision: Literal["fp32", "int8", "fp16", "auto"] | None = Field(
        default=None,
        description="query-tower variant: fp32 (default), int8/fp16 (error if the bundle lacks it), auto "
        "(fp16 on CUDA, int8 on CPU, when the bundle has that gated variant; else fp32)",
    )

    # Cache of results keyed by (bundle id, nprobe, normalised query).
    cache: Literal["auto", "memory", "redis", "none"] = "auto"
    cache_size: int = Field(default=10_000, ge=1)
    cache_ttl_s: float = Field(default=300.0, gt=0)

    # Exposure log: a bounded Redis stream and/or a JSONL file.
    exposure_stream: bool = Field(default=False, description="XADD each served request to <prefix>exposures")
    exposure_stream_maxlen: int = Field(default=100_000, ge=100)
    exposure_jsonl: Path | None = None
    exposure_jsonl_max_mb: float = Field(default=256.0, gt=0, description="rotate the JSONL file past this size")
    exposure_queue: int = Field(default=10_000, ge=10, description="pending records beyond which they are dropped")
    feedback_jsonl: Path | None = Field(default=None, description="also append POST /feedback events here")
    spool_dir: Path | None = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "crops-spool",
        description="while Redis is down, exposures and feedback are spooled here and replayed later",
    )

    # Online recall monitor: exact search for a share of live misses, off the request path.
    recall_sample: float = Field(default=0.0, ge=0, le=1, description="share of cache misses checked (0: off)")
    recall_window: int = Field(default=1000, ge=1, description="crops_online_recall_at_100 averages this many")

    # Declarative state: the desired config every worker converges to (Redis when set, else this folder).
    state_dir: Path | None = Field(
        default=None, description="folder shared by the workers of one box (crops serve --workers N sets one)"
    )
    converge_timeout_s: float = Field(default=10.0, gt=0, description="how long admin calls wait for workers")

    # HTTP limits (every endpoint): bodies, slow clients, shutdown.
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="413 beyond this (POST /feedback: 4x)")
    header_timeout_s: float = Field(default=5.0, gt=0, description="a request's headers must arrive within this")
    body_timeout_s: float = Field(default=5.0, gt=0, description="each chunk of a body must arrive within this")
    drain_s: float = Field(
        default=2.0,
        ge=0,
        description="on SIGTERM: answer not-ready and close connections after each response "
        "for this long, then stop (requests in flight finish)",
    )

    gc_freeze: bool = Field(
        default=True,
        description="once bundles are loaded, move the heap out of the cyclic collector's view "
        "(gc.freeze): a full collection over a loaded 1M-vector bundle takes ~100 ms (service.heap)",
    )
    max_query_chars: int = Field(default=512, ge=1, le=10_000)
    max_batch_items: int = Field(default=64, ge=1, le=1000)
    warmup_queries: int = Field(default=4, ge=0)
    verify_checksums: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> ServiceSettings:
        if self.cache == "redis" and not self.redis_url:
            raise ValueError("cache=redis needs CROPS_REDIS_URL")
        if self.exposure_stream and not self.redis_url:
            raise ValueError("exposure_stream needs CROPS_REDIS_URL")
        return self
