"""Settings helpers: every stage reads ``CROPS_``-prefixed env vars through pydantic-settings.

Settings objects are built inside ``create_app(settings)`` or a CLI command, never at import time.
"""

from __future__ import annotations

import os

from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CROPS_"


class CropsSettings(BaseSettings):
    """Base for stage settings: env prefix ``CROPS_``, unknown env vars ignored."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_nested_delimiter="__")


def limit_native_threads(n: int = 1) -> None:
    """Cap BLAS/OpenMP pools before numpy/faiss load them; small matmuls ran ~250x slower otherwise."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
