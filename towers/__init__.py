"""The torch side of a tower, shared by training and export: one sentence-transformers encoder.

``SentenceEncoder`` is built from a model folder's own sentence-transformers config (``modules.json``:
Transformer → Pooling (cls / mean / max / mean_sqrt_len / lasttoken) → Dense layers → Normalize), so
what trains is what exports. ``towers.checkpoint`` reads and writes the checkpoint layout declared in
``core.checkpoint``. Imports core, torch and transformers only (import-linter contract).
"""

from towers.encoder import SentenceEncoder
from towers.st_config import StConfig, read_st_config

__all__ = ["SentenceEncoder", "StConfig", "read_st_config"]
