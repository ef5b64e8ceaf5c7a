"""What the fused export buys: one-query encode latency of the query tower, unfused vs fused.

    python -m benchmarks.encoder_export            # -> docs/results/encoder_export.{md,json}

Exports the pretrained tower twice with ``towers.onnx.export_onnx`` (``fuse=False``: the eager-
attention trace as ONNX Runtime's session-level optimisations leave it; ``fuse=True``: rewritten by
``onnxruntime.transformers.optimizer``), quantises each with ``core.onnx_quant.quantize_int8``, and
encodes the same queries one at a time on one thread, the four graphs interleaved query by query so
that the machine's drift hits them alike. Queries: the real search queries of the fleet bench
(``harness.search_queries``), else the generated mix. Also reports the graph's node count and the
cosine of each graph's embeddings to the unfused fp32 graph's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness as h
from core.normalize import normalize_text
from core.onnx_encoder import OnnxEncoder
from core.onnx_quant import quantize_int8
from core.tokenizer import default_model_dir

OUT = h.ROOT / "docs" / "results" / "encoder_export.md"


def build(work: Path) -> dict[str, Path]:
    """The four graphs: unfused/fused x fp32/int8."""
    from towers.encoder import SentenceEncoder
    from towers.onnx import export_onnx

    paths: dict[str, Path] = {}
    for fused in (False, True):
        name = "fused" if fused else "unfused"
        fp32 = work / f"{name}.onnx"
        export_onnx(SentenceEncoder(default_model_dir()), fp32, fuse=fused)
        quantize_int8(fp32, work / f"{name}.int8.onnx")
        paths[f"{name} fp32"], paths[f"{name} int8"] = fp32, work / f"{name}.int8.onnx"
    return paths


def measure(paths: dict[str, Path], queries: list[str], max_length: int = 64) -> dict[str, dict[str, Any]]:
    import onnx

    tok = default_model_dir()
    encs = {k: OnnxEncoder(p, tok, max_length, intra_op_threads=1, use_gpu=False) for k, p in paths.items()}
    ref = encs["unfused fp32"].encode(queries[:300], normalized=True)
    out: dict[str, dict[str, Any]] = {}
    for k, e in encs.items():
        for q in queries[:20]:  # first calls allocate
            e.encode([q], normalized=True)
        cos = np.sum(e.encode(queries[:300], normalized=True) * ref, axis=1)
        out[k] = {"nodes": len(onnx.load(str(paths[k])).graph.node), "mean_cosine": round(float(cos.mean()), 5),
                  "min_cosine": round(float(cos.min()), 5), "ms": []}
    for q in queries:
        for k, e in encs.items():
            t = time.perf_counter()
            e.encode([q], normalized=True)
            out[k]["ms"].append((time.perf_counter() - t) * 1e3)
    for r in out.values():
        ms = sorted(r.pop("ms"))
        r.update(p50_ms=round(statistics.median(ms), 3), p99_ms=round(ms[int(0.99 * (len(ms) - 1))], 3))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000, help="how many search queries to encode")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    queries, source = h.search_queries()
    queries = [normalize_text(q) for q in queries[: a.queries]]
    with tempfile.TemporaryDirectory() as tmp:
        h.log("exporting the pretrained tower unfused and fused, fp32 and int8")
        paths = build(Path(tmp))
        h.log(f"encoding {len(queries)} queries one at a time, the graphs interleaved")
        res = measure(paths, queries)
    m = h.machine_info(tools=())
    base = res["unfused int8"]["p50_ms"]
    rows = [[k, r["nodes"], h.fmt(r["p50_ms"], 3), h.fmt(r["p99_ms"], 3), h.fmt(r["mean_cosine"], 5),
             h.fmt(r["min_cosine"], 5), h.fmt(round(base / r["p50_ms"], 2), 2)] for k, r in res.items()]
    md = "\n".join([
        "# Query tower: unfused vs fused ONNX export",
        "",
        f"{h.describe_machine(m)} · git {m['git']} · {len(queries)} queries ({source}), one at a "
        "time, one thread, the graphs interleaved query by query.",
        "",
        "    python -m benchmarks.encoder_export",
        "",
        *h.markdown_table(["graph", "nodes", "p50 ms", "p99 ms", "mean cosine to unfused fp32", "min cosine",
                           "speed-up over unfused int8 (p50)"], rows),
        "",
    ])
    h.write_report(a.out, md, {"queries": len(queries), "source": source, "machine": m, "graphs": res})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
