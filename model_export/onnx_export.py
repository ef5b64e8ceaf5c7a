"""Torch → ONNX export of one tower, and the parity gate."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from core.errors import CropsError, ErrorKind
from core.normalize import normalize_text
from core.onnx_encoder import OnnxEncoder
from core.tokenizer import encode_batch, load_tokenizer
from towers.encoder import Adapter, SentenceEncoder
from towers.onnx import DEFAULT_OPSET, export_onnx

log = logging.getLogger(__name__)

# Fixed probe set: short head queries, long tail queries, non-ASCII, punctuation, typos.
PROBE_QUERIES: tuple[str, ...] = (
    "cat video",
    "transformer",
    "how to fix a power transformer that hums",
    "attention is all you need explained in five minutes",
    "funny dogs compilation 2024",
    "北京 美食 探店",
    "café au lait recipe — easy!",
    "minecraft speedrun world record any% glitchless",
    "lofi beats to study",
    "teh best pizza dough recpie",
    "?",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 4,
)


def export_tower(
    model_dir: Path, out_path: Path, *, opset: int = DEFAULT_OPSET, adapter: Adapter | None = None
) -> None:
    """Export ``SentenceEncoder(model_dir, adapter)``, fused for ONNX Runtime (``towers.onnx``)."""
    export_onnx(SentenceEncoder(model_dir, adapter), out_path, opset=opset)


def parity_error(
    model_dir: Path, onnx_path: Path, tokenizer_path: Path, max_length: int,
    probes: tuple[str, ...] = PROBE_QUERIES, adapter: Adapter | None = None,
) -> float:
    """Max abs difference between torch and ONNX Runtime embeddings on the probe set (batched and single)."""
    model = SentenceEncoder(model_dir, adapter).eval()
    tok = load_tokenizer(tokenizer_path, max_length)
    enc = OnnxEncoder(onnx_path, tokenizer_path, max_length, use_gpu=False)
    texts = [normalize_text(p) for p in probes]
    worst = 0.0
    groups = [texts] + [[t] for t in texts]  # padded batch and unpadded singles
    for group in groups:
        ids, mask = encode_batch(tok, group)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        got = enc.encode(group, normalized=True)
        worst = max(worst, float(np.max(np.abs(ref - got))))
    return worst


def check_parity(err: float, tolerance: float, what: str) -> None:
    if not np.isfinite(err) or err > tolerance:
        raise CropsError(
            ErrorKind.PARITY_FAILED,
            f"{what}: ONNX vs torch max abs error {err:.3g} exceeds tolerance {tolerance:.3g}; "
            "the exported graph does not reproduce the model",
        )
