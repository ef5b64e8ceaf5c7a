"""The world's file output goes through core's atomic writes (one implementation, ``core.atomic``)."""

from __future__ import annotations

from core.atomic import atomic_path
from core.atomic import atomic_write_parquet as write_parquet

__all__ = ["atomic_path", "write_parquet"]
