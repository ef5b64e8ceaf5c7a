"""ONNX Runtime CUDA check for the query tower (run on a CUDA machine; writes one JSON).

Exports the pretrained MiniLM query tower with the int8 and fp16 variants (the fp16 gate runs only
where the CUDA provider exists), then times one query and a batch of 64 through ``OnnxEncoder`` on
each provider/precision the serving path can pick, and the largest cosine gap to CPU fp32.

    python -m benchmarks.gpu_onnx_check --out result.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from core.onnx_encoder import OnnxEncoder, available_providers  # noqa: E402
from model_export.export import export_bundle  # noqa: E402

QUERIES = [
    "funny cat compilation", "how to fix a leaking tap", "minecraft castle build tutorial",
    "python snake feeding", "learn python programming", "iphone 15 camera review",
    "easy pasta recipe for two", "guitar solo lesson beginner", "transformer toys unboxing",
    "power transformer substation",
]


def timed(enc: OnnxEncoder, texts: list[str], repeats: int) -> dict[str, float]:
    enc.encode(texts)  # warm-up (CUDA graph capture, allocator)
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc.encode(texts)
        ms.append((time.perf_counter() - t0) * 1e3)
    ms.sort()
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    result: dict[str, object] = {"providers": available_providers()}
    work = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    m = export_bundle(work / "b", max_query_tokens=32, max_doc_tokens=64, variants=("int8", "fp16"))
    result["export_seconds"] = round(time.perf_counter() - t0, 1)
    assert m.model is not None
    result["parity_error_vs_torch"] = m.model.parity_max_abs_err
    result["variants"] = {k: v.model_dump() for k, v in m.model.variants.items()}
    result["variants_refused"] = m.model.variants_refused
    b = work / "b"
    batch = [f"{q} {i}" for i in range(7) for q in QUERIES][:64]
    ref = OnnxEncoder(b / "query_encoder.onnx", b / "tokenizer.json", 32, use_gpu=False).encode(batch)
    rows = {}
    for name, file, gpu in (
        ("cpu fp32 (1 thread)", "query_encoder.onnx", False),
        ("cpu int8 (1 thread)", "query_encoder.int8.onnx", False),
        ("cuda fp32", "query_encoder.onnx", True),
        ("cuda fp16", "query_encoder.fp16.onnx", True),
    ):
        if not (b / file).exists():
            rows[name] = {"skipped": f"{file} not in the bundle"}
            continue
        if gpu and "CUDAExecutionProvider" not in available_providers():
            rows[name] = {"skipped": "no CUDA provider"}
            continue
        enc = OnnxEncoder(b / file, b / "tokenizer.json", 32, use_gpu=gpu)
        emb = enc.encode(batch)
        rows[name] = {
            "provider": enc.providers[0],
            "max_abs_err_vs_cpu_fp32": float(np.abs(emb - ref).max()),
            "min_cosine_vs_cpu_fp32": float((emb * ref).sum(1).min()),
            "one_query": timed(enc, [QUERIES[0]], args.repeats),
            "batch_64": timed(enc, batch, max(20, args.repeats // 5)),
        }
        print(name, json.dumps(rows[name]), flush=True)
    result["encode"] = rows
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
