"""``crops index build``: corpus → doc-tower embeddings → faiss index + id map, recorded in the bundle."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.atomic import atomic_write_bytes, atomic_write_json
from core.corpus import Doc, load_corpus
from core.errors import CropsError, ErrorKind
from core.manifest import IndexSection, register_file, verify_bundle, write_manifest
from core.normalize import doc_text, normalize_text
from core.onnx_encoder import OnnxEncoder
from index_builder.faiss_utils import choose_factory, exact_topk, recall_vs_exact, set_search_params

log = logging.getLogger(__name__)

NPROBE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def encode_corpus(
    bundle_dir: Path, docs: list[Doc], *, batch_size: int = 64, progress: bool = True, threads: int = 0
) -> np.ndarray:
    """Doc-tower embeddings (n, dim) float32 in corpus order."""
    manifest = verify_bundle(bundle_dir)
    assert manifest.model is not None
    model = manifest.model
    onnx_name = model.doc_onnx or model.query_onnx
    enc = OnnxEncoder(bundle_dir / onnx_name, bundle_dir / model.tokenizer, model.max_doc_tokens,
                      intra_op_threads=threads)
    texts = [doc_text(d.title, d.text) for d in docs]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    bar = tqdm(total=len(texts), desc="encoding corpus", unit="doc", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = enc.encode([texts[i] for i in idx], normalized=True)
        bar.update(len(idx))
    bar.close()
    return out


def sample_queries(docs: list[Doc], n: int, seed: int = 0) -> list[str]:
    """Pseudo-queries for recall measurement: the first words of random docs' titles (or texts)."""
    rng = random.Random(seed)
    picks = rng.sample(docs, min(n, len(docs)))
    out = []
    for d in picks:
        words = normalize_text(d.title or d.text).split()
        if words:
            out.append(" ".join(words[: rng.randint(2, 6)]))
    return out


def train_and_add(factory: str, vectors: np.ndarray, *, seed: int = 0) -> Any:
    import faiss

    dim = vectors.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise CropsError(ErrorKind.INVALID_INPUT, f"invalid faiss factory string {factory!r}: {exc}") from exc
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        n_train = min(len(vectors), 256 * 1024)
        sample = vectors[rng.choice(len(vectors), n_train, replace=False)] if n_train < len(vectors) else vectors
        index.train(sample)
    index.add(vectors)
    return index


def tune_nprobe(index: Any, queries: np.ndarray, truth: np.ndarray, target: float, k: int = 100) -> tuple[int | None, float]:
    """Smallest nprobe on the grid whose recall@k vs exact reaches ``target`` (else the best seen)."""
    from index_builder.faiss_utils import ivf_of

    ivf = ivf_of(index)
    if ivf is None:
        _, found = index.search(queries, k)
        return None, recall_vs_exact(found, truth)
    best: tuple[int | None, float] = (None, -1.0)
    for nprobe in NPROBE_GRID:
        if nprobe > ivf.nlist:
            break
        set_search_params(index, nprobe=nprobe)
        _, found = index.search(queries, k)
        rec = recall_vs_exact(found, truth)
        if rec > best[1]:
            best = (nprobe, rec)
        if rec >= target:
            return nprobe, rec
    return best


def build_index(
    bundle_dir: Path | str,
    corpus: Path | str,
    *,
    factory: str | None = None,
    batch_size: int = 64,
    n_recall_queries: int = 200,
    target_recall: float = 0.95,
    progress: bool = True,
    seed: int = 0,
) -> IndexSection:
    """Build the bundle's index over ``corpus`` and record factory, nprobe and measured recall@100."""
    import faiss

    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    assert manifest.model is not None
    if not 0 < target_recall <= 1:
        raise CropsError(ErrorKind.INVALID_INPUT, f"target recall must be in (0, 1], got {target_recall}")
    t0 = time.perf_counter()
    docs = load_corpus(corpus)
    ids = [d.doc_id for d in docs]
    if len(set(ids)) != len(ids):
        raise CropsError(ErrorKind.INVALID_INPUT, f"corpus {corpus} has duplicate document ids")
    vectors = encode_corpus(bundle_dir, docs, batch_size=batch_size, progress=progress)
    factory = factory or choose_factory(len(vectors), vectors.shape[1])
    log.info("building %s over %d vectors", factory, len(vectors))
    index = train_and_add(factory, vectors, seed=seed)

    qtexts = sample_queries(docs, n_recall_queries, seed=seed)
    model = manifest.model
    qenc = OnnxEncoder(bundle_dir / model.query_onnx, bundle_dir / model.tokenizer, model.max_query_tokens)
    qvecs = qenc.encode_batched(qtexts)
    truth = exact_topk(vectors, qvecs, 100)
    nprobe, recall = tune_nprobe(index, qvecs, truth, target_recall)
    if nprobe is not None:
        set_search_params(index, nprobe=nprobe)

    atomic_write_bytes(bundle_dir / "index.faiss", faiss.serialize_index(index).tobytes())
    atomic_write_json(bundle_dir / "id_map.json", ids)
    register_file(bundle_dir, manifest, "index.faiss")
    register_file(bundle_dir, manifest, "id_map.json")
    section = IndexSection(
        model_id=model.model_id,
        factory=factory,
        ntotal=int(index.ntotal),
        dim=int(vectors.shape[1]),
        nprobe=nprobe,
        recall_at_100=round(recall, 4),
        recall_queries=len(qtexts),
        corpus=str(corpus),
        build_seconds=round(time.perf_counter() - t0, 2),
    )
    manifest.index = section
    write_manifest(bundle_dir, manifest)
    log.info("index %s: ntotal=%d nprobe=%s recall@100=%.4f", factory, index.ntotal, nprobe, recall)
    return section

