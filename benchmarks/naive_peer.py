"""The naive peer, what a team writes first: sentence-transformers (torch) + faiss Flat in FastAPI.

Same model (all-MiniLM-L6-v2 from the offline package), same 1M vectors, exact search, one uvicorn
worker, a pydantic response model, and the libraries' default threads: as many as cores for torch
and faiss (set explicitly, since ``benchmarks`` caps its processes at one thread). It lives here,
never in service/, and exists only to be measured against.

    python -m benchmarks.naive_peer --vectors V.npy --port 8100
"""

import argparse
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

# No `from __future__ import annotations` here: FastAPI must see these classes, not strings.


class Query(BaseModel):
    query: str
    user_id: str | None = None
    top_k: int = Field(100, ge=1, le=100)


class Candidate(BaseModel):
    video_id: str
    score: float


class Answer(BaseModel):
    arm: str
    candidates: list[Candidate]


def create_app(vectors_path: Path, model_dir: Path | None = None) -> Any:
    import faiss
    import numpy as np
    import torch
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    from benchmarks.vectors import bench_ids
    from core.tokenizer import default_model_dir

    torch.set_num_threads(os.cpu_count() or 1)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(str(model_dir or default_model_dir()), device="cpu")
    vectors = np.load(vectors_path, mmap_mode="r")
    index = faiss.IndexFlatIP(vectors.shape[1])
    for s in range(0, vectors.shape[0], 100_000):
        index.add(np.ascontiguousarray(vectors[s : s + 100_000], dtype=np.float32))
    ids = bench_ids(index.ntotal)

    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/retrieve", response_model=Answer)
    def retrieve(q: Query) -> Answer:
        emb = model.encode([q.query], normalize_embeddings=True)
        scores, rows = index.search(np.asarray(emb, dtype=np.float32), q.top_k)
        return Answer(
            arm="naive",
            candidates=[
                Candidate(video_id=ids[r], score=float(s))
                for r, s in zip(rows[0], scores[0], strict=True)
                if r >= 0
            ],
        )

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vectors", type=Path, required=True, help=".npy (n, dim) float32 unit vectors")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    a = ap.parse_args()
    import uvicorn

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(a.vectors), host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
