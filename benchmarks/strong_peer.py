"""The strong peer: what a competent team would deploy instead of the service.

A plain FastAPI app under uvicorn: the bundle's own int8 ONNX query tower through ONNX Runtime, the
same tokenizer, the same faiss index at the same nprobe/k_factor (so the same recall), one intra-op
thread per worker, ``--workers`` uvicorn workers. No micro-batching, no cache, no single-flight, no
A/B, no metrics: only encode + search + JSON. It lives here, never in service/, and exists only to
be measured against. (The ONNX embedding-server libraries, e.g. fastembed, cannot load a model
offline here; on the same ONNX file they were within noise of this app.)

    python -m benchmarks.strong_peer --bundle B --port 18210 --workers 2
"""

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

# No `from __future__ import annotations` here: FastAPI must see these classes, not strings.


class Query(BaseModel):
    query: str
    user_id: str | None = None
    top_k: int = Field(100, ge=1, le=100)


def create_app() -> Any:
    """The app for one uvicorn worker; the bundle comes from ``STRONG_PEER_BUNDLE``."""
    import faiss
    import numpy as np
    import onnxruntime as ort
    from fastapi import FastAPI
    from fastapi.responses import Response
    from tokenizers import Tokenizer

    bundle = Path(os.environ["STRONG_PEER_BUNDLE"])
    man = json.loads((bundle / "manifest.json").read_text())
    model, sec = man["model"], man["index"]
    onnx_file = (model.get("variants") or {}).get("int8", {}).get("file") or model["query_onnx"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle / onnx_file), sess_options=opts, providers=["CPUExecutionProvider"])
    input_names = {i.name for i in sess.get_inputs()}
    tok = Tokenizer.from_file(str(bundle / model["tokenizer"]))
    tok.enable_truncation(int(model["max_query_tokens"]))
    tok.no_padding()
    faiss.omp_set_num_threads(1)
    index = faiss.read_index(str(bundle / sec["index_file"]))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and sec.get("nprobe"):
        ivf.nprobe = int(sec["nprobe"])
    if sec.get("k_factor") and hasattr(index, "k_factor"):
        index.k_factor = float(sec["k_factor"])
    graph = faiss.downcast_index(index)
    if sec.get("ef_search") and isinstance(graph, faiss.IndexHNSW):
        graph.hnsw.efSearch = int(sec["ef_search"])
        graph.hnsw.search_bounded_queue = False  # type: ignore[attr-defined]  # as the service searches: the same cost, the same results
    ids = json.loads((bundle / sec["id_map_file"]).read_text())

    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/retrieve")
    def retrieve(q: Query) -> Response:
        enc = tok.encode(q.query.lower())
        feed = {"input_ids": np.array([enc.ids], dtype=np.int64),
                "attention_mask": np.array([enc.attention_mask], dtype=np.int64)}
        if "token_type_ids" in input_names:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        vec = sess.run(None, feed)[0].astype(np.float32)
        scores, rows = index.search(vec, q.top_k)
        cands = [{"video_id": ids[r], "score": float(s)} for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]
        return Response(json.dumps({"arm": "peer", "candidates": cands}), media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="strong peer: FastAPI + ONNX Runtime int8 + faiss")
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--port", type=int, default=18210)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    os.environ["STRONG_PEER_BUNDLE"] = str(a.bundle.resolve())
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    uvicorn.run("benchmarks.strong_peer:create_app", factory=True, host="127.0.0.1", port=a.port, workers=a.workers,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
