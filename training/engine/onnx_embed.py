"""A faster CPU path for θ's embeddings: the same MiniLM-L6 (torch, transformers) exported once to
ONNX and quantised to int8 (per-channel, MatMul weights), run by ONNX Runtime.

Why: θ must embed every distinct query and candidate video (~40k texts on the default world);
fp32 torch on 2 shared cores is the mining job's bottleneck. Per-channel int8 keeps cosine ≈ 0.99
with fp32 (the variant gate, ``model_export/variants.py``) and θ's head and calibration are fitted
on the same int8 features, so the probability stays calibrated. The export is cached next to the
embeddings (one-time cost).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.onnx_encoder import OnnxEncoder
from core.tokenizer import default_model_dir


def export_int8(model_dir: Path | None, out_dir: Path) -> Path:
    """Export the pooled, L2-normalised MiniLM tower to ONNX and quantise it (idempotent)."""
    out = out_dir / "theta_encoder.int8.onnx"
    if out.is_file():
        return out
    from core.onnx_quant import quantize_int8
    from towers.onnx import export_onnx
    from training.encoder import TextEncoder

    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / ".theta_encoder.fp32.onnx"
    export_onnx(TextEncoder(model_dir), fp32)
    quantize_int8(fp32, out)
    fp32.unlink(missing_ok=True)
    return out


class OnnxInt8Embedder:
    """``encode(texts, batch_size, normalized=True)`` like ``TextEncoder.encode``, on ONNX Runtime."""

    def __init__(self, model_dir: Path | None, cache_dir: Path, max_length: int, threads: int) -> None:
        path = export_int8(model_dir, cache_dir)
        tok_dir = Path(model_dir) if model_dir else default_model_dir()
        self._enc = OnnxEncoder(path, tok_dir, max_length, intra_op_threads=threads, use_gpu=False)
        self.tokenizer: Any = self._enc.tokenizer

    def encode(self, texts: list[str], batch_size: int = 128, *, normalized: bool = True) -> np.ndarray:
        return self._enc.encode_batched(texts, batch_size=batch_size, normalized=normalized)
