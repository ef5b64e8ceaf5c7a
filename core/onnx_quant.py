"""int8 dynamic quantisation of an ONNX encoder (shared by the exported query tower and θ)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _fuse_transformer_ops(src: Path, dst: Path) -> bool:
    """ONNX Runtime's offline BERT fusions (SkipLayerNormalization, BiasGelu, ...) written to ``dst``.

    Fusing before quantising keeps those ops out of the int8 rewrite: on a 2-core EPYC a one-query
    MiniLM encode went from 1.94 to 1.21 ms with the same cosine to fp32 (0.992). False when the
    optimiser is unavailable or fails (the caller then quantises the plain graph).
    """
    try:
        from onnxruntime.transformers import optimizer

        # num_heads/hidden_size 0: read from the graph; opt_level 1 = fusions only, no EP-specific code
        model = optimizer.optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=1)
        model.save_model_to_file(str(dst))
        return True
    except Exception as exc:  # an unusual graph must not break quantisation
        log.warning("transformer fusions skipped for %s: %s", src, exc)
        return False


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = True, fuse: bool = True) -> None:
    """Per-channel (default) int8 weights on MatMul, activations quantised on the fly; atomic.
    ``fuse``: apply the transformer fusions first (faster, same accuracy)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_suffix(".tmp.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser and optimiser log one INFO line per tensor on the root logger
    try:
        with tempfile.TemporaryDirectory() as work:
            fused = Path(work) / "fused.onnx"
            source = fused if fuse and _fuse_transformer_ops(src, fused) else src
            quantize_dynamic(
                model_input=str(source),
                model_output=str(tmp),
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                # fused contrib ops have no ONNX shape inference: their outputs are float
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        root.setLevel(level)
    tmp.replace(dst)
