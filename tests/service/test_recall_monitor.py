"""The online recall monitor agrees with an offline recall@100 measurement on the same queries."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tests.service.conftest import LiveServer

TOKEN = "recall-token"


def _offline_recall(bundle: Path, queries: list[str]) -> float:
    """Encode + search as served, and exact inner product over the index's vectors (numpy)."""
    import faiss

    from core.normalize import normalize_text
    from service.engine import Retriever

    r = Retriever(bundle, use_gpu=False)
    ivf = faiss.extract_index_ivf(r.index)
    ivf.make_direct_map()
    docs = ivf.reconstruct_n(0, ivf.ntotal)
    vecs = r.encode([normalize_text(q) for q in queries])
    approx = r.search_vectors(vecs, 100)
    recalls = []
    for v, got in zip(vecs, approx, strict=True):
        top = np.argsort(-(docs @ v))[:100]
        truth = {r.ids[i] for i in top}
        recalls.append(len(truth & set(got.ids)) / len(truth))
    return float(np.mean(recalls))


def test_online_recall_matches_offline_recall(ivf_bundle: Path) -> None:
    words = ["cat", "dog", "guitar", "pasta", "minecraft", "lofi", "piano", "travel", "football", "makeup"]
    queries = [f"{words[i % 10]} {words[(i * 3 + 1) % 10]} video {i}" for i in range(60)]
    with LiveServer(bundle=ivf_bundle, recall_sample=1.0, cache="none", admin_token=TOKEN) as srv:
        for q in queries:
            assert srv.retrieve(q).status_code == 200
        deadline = time.time() + 30
        while True:
            info = srv.client.get("/info", headers={"x-crops-admin-token": TOKEN}).json()
            if info["online_recall"].get("default", {}).get("samples") == len(queries):
                break
            assert time.time() < deadline, info["online_recall"]
            time.sleep(0.1)
        online = srv.metric("crops_online_recall_at_100", bundle="default")
    offline = _offline_recall(ivf_bundle, queries)
    print(f"online recall@100 {online:.4f}, offline {offline:.4f}")
    assert 0.0 < offline <= 1.0
    assert abs(online - offline) <= 0.02, (online, offline)
