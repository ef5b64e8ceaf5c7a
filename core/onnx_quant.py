"""int8 dynamic quantisation of an ONNX encoder (shared by the exported query tower and θ)."""

from __future__ import annotations

import logging
from pathlib import Path

from core.atomic import atomic_path


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = True) -> None:
    """Per-channel (default) int8 weights on MatMul and fused Attention (the QKV projection),
    activations quantised on the fly; atomic.

    The input is normally the fused graph of ``towers.onnx`` (ONNX Runtime contrib operators, which
    shape inference cannot type: their outputs are declared float).
    """
    import onnx
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
                op_types_to_quantize=["MatMul", "Attention"],
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        root.setLevel(level)
