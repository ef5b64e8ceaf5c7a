"""Text → L2-normalised embedding with ONNX Runtime (the serving and indexing path; no torch).

The exported graph takes ``input_ids`` and ``attention_mask`` and returns ``embedding``, already
mean-pooled over the mask and L2-normalised, so every caller gets the same vectors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import CropsError, ErrorKind
from core.normalize import normalize_text
from core.tokenizer import encode_batch, load_tokenizer


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


_CUDA_PRELOADED = False


def _preload_cuda(ort: Any) -> None:
    """Load CUDA/cuDNN from the nvidia-* pip wheels (onnxruntime-gpu[cuda,cudnn]) once; without it
    the CUDA provider silently falls back to CPU when the libraries are not on the loader path."""
    global _CUDA_PRELOADED
    if not _CUDA_PRELOADED and hasattr(ort, "preload_dlls"):
        _CUDA_PRELOADED = True
        with contextlib.suppress(Exception):  # system CUDA installs do not need it
            ort.preload_dlls()


def make_session(
    model_path: Path | str,
    *,
    intra_op_threads: int = 1,
    use_gpu: bool | None = None,
) -> Any:
    """An ONNX Runtime session with settings chosen for serving.

    One intra-op thread per worker process by default: on a 2-core box more threads oversubscribe
    the cores once two workers run. Full graph optimisation (attention/GELU fusion). CUDA provider
    when present (``use_gpu`` None = auto), always with CPU fallback.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(0, intra_op_threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = ["CPUExecutionProvider"]
    if use_gpu is not False and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
        _preload_cuda(ort)
    elif use_gpu:
        raise CropsError(ErrorKind.BACKEND, "use_gpu requested but onnxruntime has no CUDA provider")
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"cannot load ONNX model {model_path}: {exc}") from exc


class OnnxEncoder:
    """Tokenise + run the ONNX tower. Inputs are normalised with the ONE normalisation function."""

    def __init__(
        self,
        model_path: Path | str,
        tokenizer_path: Path | str,
        max_length: int,
        *,
        intra_op_threads: int = 1,
        use_gpu: bool | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.max_length = max_length
        self.tokenizer = load_tokenizer(tokenizer_path, max_length)
        self.session = make_session(model_path, intra_op_threads=intra_op_threads, use_gpu=use_gpu)
        self.providers: list[str] = list(self.session.get_providers())
        out = self.session.get_outputs()[0]
        self.dim = int(out.shape[-1])

    def encode(self, texts: Sequence[str], *, normalized: bool = False) -> np.ndarray:
        """Embeddings (n, dim) float32, unit length. ``normalized`` says texts are already normalised."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = list(texts) if normalized else [normalize_text(t) for t in texts]
        ids, mask = encode_batch(self.tokenizer, batch)
        (emb,) = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        return np.ascontiguousarray(emb, dtype=np.float32)

    def encode_batched(
        self, texts: Sequence[str], batch_size: int = 64, *, normalized: bool = False
    ) -> np.ndarray:
        """Encode many texts in length-sorted batches (less padding), returned in input order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.encode([texts[i] for i in idx], normalized=normalized)
        return out


def variant_model_path(
    bundle_dir: Path | str, model: Any, variant: str | None = "fp32", *, gpu: bool | None = None
) -> tuple[Path, str]:
    """(ONNX file, variant name) of the query tower to serve from a bundle's ``ModelSection``.

    ``variant``: "fp32" (or None) the exported tower; "int8" / "fp16" a gated variant recorded under
    ``model.variants`` (error if the bundle has none); "auto": fp16 when the CUDA provider is
    present, else int8, falling back to fp32 when the bundle lacks the variant.
    """
    bundle_dir = Path(bundle_dir)
    variants = dict(getattr(model, "variants", {}) or {})
    if variant in (None, "", "fp32"):
        return bundle_dir / model.query_onnx, "fp32"
    if variant == "auto":
        cuda = "CUDAExecutionProvider" in available_providers() if gpu is None else gpu
        for name in (("fp16",) if cuda else ("int8",)):
            if name in variants:
                return bundle_dir / variants[name].file, name
        return bundle_dir / model.query_onnx, "fp32"
    if variant not in variants:
        raise CropsError(
            ErrorKind.BUNDLE_INVALID,
            f"{bundle_dir}: no {variant!r} query-tower variant (has: {sorted(variants) or 'none'}); "
            "run `crops export-variants`",
        )
    return bundle_dir / variants[variant].file, variant
