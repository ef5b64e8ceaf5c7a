"""int8 dynamic quantisation of an ONNX encoder (shared by the exported query tower and θ)."""

from __future__ import annotations

import logging
from pathlib import Path

from core.atomic import atomic_path


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = True) -> None:
    """Per-channel (default) int8 weights on MatMul, activations quantised on the fly; atomic.

    No offline transformer fusions first: ONNX Runtime applies them when the session is created
    (ORT_ENABLE_ALL), and an A/B on a 2-core EPYC gave the same one-query latency (0.93 vs 0.96 ms
    p50) and the same cosine to fp32 with and without them.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs one INFO line per tensor on the root logger
    try:
        with atomic_path(dst) as tmp:
            quantize_dynamic(
                model_input=str(src),
                model_output=str(tmp),
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
            )
    finally:
        root.setLevel(level)
