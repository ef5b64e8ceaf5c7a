"""``crops index build``: corpus → doc-tower embeddings → faiss index + id map, recorded in the bundle.

Also the incremental paths (add new videos, remove taken-down ones) and the build from encoded
shards. Every path ends in ``persist_index``: index (CPU form), id map, held-out query vectors, the
latency/recall curve and the manifest, each written atomically, the manifest last.
"""

from __future__ import annotations

import io
import logging
import random
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_path, atomic_write_bytes, atomic_write_json
from core.corpus import Doc, load_corpus
from core.errors import CropsError, ErrorKind
from core.manifest import (
    BundleManifest,
    IndexSection,
    load_id_map,
    register_file,
    verify_bundle,
    write_manifest,
)
from core.normalize import normalize_text
from core.onnx_encoder import OnnxEncoder
from core.search_params import apply_manifest_params, ivf_of, refine_of
from index_builder import ops
from index_builder.faiss_utils import (
    choose_factory,
    exact_topk,
    gpu_count,
    production_factory,
    recall_vs_exact,
    recall_with_error,
)
from index_builder.graded import GradedSet, load_graded, recall_by_level
from index_builder.queries import query_sets
from index_builder.shards import doc_encoder, encode_rows, load_shards
from index_builder.tuning import NPROBE_GRID, lower_bound, reaches, tune, tune_goal, write_curve

log = logging.getLogger(__name__)

QUERIES_FILE = "recall_queries.npy"
# Re-exported: skeleton callers import these names from here.
__all__ = ["NPROBE_GRID", "add_docs", "build_from_vectors", "build_index", "encode_corpus", "ivf_of",
           "refine_of", "remove_docs", "sample_queries", "train_and_add", "tune_nprobe"]


def default_factory(n: int, dim: int, *, ann: bool, memory_budget_bytes: int | None, opq: bool,
                    refine: bool) -> str:
    """The factory built when none is given: by corpus size, or the production IVF-PQ with ``ann``."""
    pick = production_factory if ann else choose_factory
    return pick(n, dim, memory_budget_bytes=memory_budget_bytes, opq=opq, refine=refine)


def require_gpu(*, encode: bool) -> None:
    """Fail before any work when the GPU was asked for and is absent: faiss GPU for the build, and
    the ONNX Runtime CUDA provider when the doc tower has to encode."""
    if gpu_count() == 0:
        raise CropsError(ErrorKind.BACKEND, "--device cuda: faiss sees no GPU (install faiss-gpu in place "
                         "of faiss-cpu, and check the driver), or use --device cpu/auto")
    if encode:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise CropsError(ErrorKind.BACKEND, "--device cuda: onnxruntime has no CUDA provider (install "
                             "onnxruntime-gpu), or use --device cpu/auto")


def encode_corpus(
    bundle_dir: Path, docs: list[Doc], *, batch_size: int = 64, progress: bool = True, threads: int = 1,
    use_gpu: bool | None = None,
) -> np.ndarray:
    """Doc-tower embeddings (n, dim) float32 in corpus order (same chunking as the shard path)."""
    enc, _ = doc_encoder(Path(bundle_dir), threads=threads, use_gpu=use_gpu)
    return encode_rows(enc, docs, 0, len(docs), batch_size=batch_size, progress=progress)


def sample_queries(docs: list[Doc], n: int, seed: int = 0) -> list[str]:
    """Prefix pseudo-queries (the first words of random docs' titles): too easy to tune on, they
    overstate recall on real queries; ``index_builder.queries`` has the builder's default."""
    rng = random.Random(seed)
    picks = rng.sample(docs, min(n, len(docs)))
    out = []
    for d in picks:
        words = normalize_text(d.title or d.text).split()
        if words:
            out.append(" ".join(words[: rng.randint(2, 6)]))
    return out


def train_and_add(factory: str, vectors: np.ndarray, *, seed: int = 0) -> Any:
    """A trained index over ``vectors`` (labels = rows); kept for callers of the skeleton API."""
    return ops.train_and_add(factory, vectors, seed=seed)[0]


def tune_nprobe(
    index: Any, queries: np.ndarray, truth: np.ndarray, target: float, k: int = 100
) -> tuple[int | None, float]:
    """Smallest nprobe reaching ``target`` (skeleton API; ``tuning.tune`` also tunes k_factor)."""
    chosen, _ = tune(index, queries, truth, target, k=k, n_latency=8)
    return chosen.nprobe, chosen.recall


def _query_encoder(bundle_dir: Path, manifest: BundleManifest) -> OnnxEncoder:
    m = manifest.model
    assert m is not None
    return OnnxEncoder(bundle_dir / m.query_onnx, bundle_dir / m.tokenizer, m.max_query_tokens)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def persist_index(
    bundle_dir: Path, manifest: BundleManifest, index: Any, ids: Sequence[str], section: IndexSection,
    queries: np.ndarray | None,
) -> None:
    """Write ``index`` (CPU form), its id map and ``queries`` (the tuning vectors) into the bundle and
    record ``section`` in its manifest, each file atomically and the manifest last."""
    import faiss

    atomic_write_bytes(bundle_dir / section.index_file, faiss.serialize_index(index).tobytes())
    atomic_write_json(bundle_dir / section.id_map_file, list(ids))
    for name in (section.index_file, section.id_map_file):
        register_file(bundle_dir, manifest, name)
    if queries is not None:
        atomic_write_bytes(bundle_dir / QUERIES_FILE, _npy_bytes(queries))
        register_file(bundle_dir, manifest, QUERIES_FILE)
        section.recall_queries_file = QUERIES_FILE
    for extra in (section.curve_json, section.curve_png):
        if extra:
            register_file(bundle_dir, manifest, extra)
    section.index_bytes = (bundle_dir / section.index_file).stat().st_size
    manifest.index = section
    write_manifest(bundle_dir, manifest)


def build_from_vectors(
    bundle_dir: Path | str,
    vectors: np.ndarray,
    ids: Sequence[str],
    queries: np.ndarray,
    *,
    factory: str | None = None,
    target_recall: float = 0.95,
    report_queries: np.ndarray | None = None,
    graded: tuple[list[str], np.ndarray, dict[str, dict[str, int]]] | None = None,
    memory_budget_bytes: int | None = None,
    opq: bool = False,
    refine: bool = True,
    ann: bool = False,
    corpus: str | None = None,
    seed: int = 0,
    use_gpu: bool | None = None,
    timings: dict[str, float] | None = None,
    n_latency: int = 100,
    tune_margin: float = 0.0,
    queries_kind: str | None = None,
    queries_source: str | None = None,
    progress: bool = True,
) -> IndexSection:
    """Build, tune and persist the bundle's index from embeddings already computed.

    ``queries`` (held-out query vectors) tune nprobe/k_factor and give the recorded recall@100;
    ``report_queries`` (optional, disjoint) give an unbiased recall at the chosen point.
    ``graded`` = (query ids, query vectors, qrels) adds recall per relevance level.
    ``ann`` forces the production IVF-PQ recipe even below the Flat threshold.
    ``tune_margin`` is added to the target while tuning (pseudo-queries overstate real recall);
    ``queries_kind``/``queries_source`` say what the tuning queries are, in the manifest.
    ``progress``: a bar while a large index takes its rows (stderr).
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    assert manifest.model is not None
    if not 0 < target_recall <= 1:
        raise CropsError(ErrorKind.INVALID_INPUT, f"target recall must be in (0, 1], got {target_recall}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n != len(ids) or n == 0:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{n} vectors but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise CropsError(ErrorKind.INVALID_INPUT, f"corpus {corpus} has duplicate document ids")
    if dim != manifest.model.embedding_dim:
        raise CropsError(ErrorKind.INCOMPATIBLE, f"vectors have dim {dim}, model {manifest.model.embedding_dim}")
    if use_gpu:
        require_gpu(encode=False)
    timings = dict(timings or {})
    factory = factory or default_factory(n, dim, ann=ann, memory_budget_bytes=memory_budget_bytes, opq=opq,
                                         refine=refine)
    log.info("building %s over %d vectors", factory, n)
    t0 = time.perf_counter()
    index, built_on = ops.train_and_add(factory, vectors, seed=seed, use_gpu=use_gpu, progress=progress)
    timings["train_add_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    order = ops.store_in_locality_order(index, vectors, seed=seed)
    if order is not None:  # a graph's rows now lie in cluster order: the id map and vectors follow
        vectors, ids = vectors[order], [ids[i] for i in order]
        timings["order_s"] = round(time.perf_counter() - t0, 2)

    import faiss

    if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        tune_margin = 0.0  # exact search: its recall is 1.0 whatever the queries
    t0 = time.perf_counter()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    truth = exact_topk(vectors, queries, 100)
    goal = tune_goal(target_recall, tune_margin)
    chosen, points = tune(index, queries, truth, goal, n_latency=n_latency)
    timings["tune_s"] = round(time.perf_counter() - t0, 2)
    section = IndexSection(
        model_id=manifest.model.model_id, factory=factory, ntotal=int(index.ntotal), dim=dim,
        nprobe=chosen.nprobe, k_factor=chosen.k_factor, ef_search=chosen.ef_search,
        # Pseudo-queries are tuned to target + margin and the margin is taken off the recorded
        # figure: on real query sets their recall ran up to ~0.02 above the real queries'.
        recall_at_100=round(chosen.recall - tune_margin, 4),
        recall_queries=len(queries), corpus=corpus,
        build_seconds=round(sum(timings.values()), 2),
    )
    section.target_recall = target_recall
    section.target_met = reaches(chosen, goal)  # as the tuner judged it
    # What the recall figure is about (extra fields of the index section, schema unchanged).
    section.recall_queries_kind = queries_kind or "given vectors"  # type: ignore[attr-defined]
    section.recall_queries_source = queries_source  # type: ignore[attr-defined]
    section.tune_margin = tune_margin  # type: ignore[attr-defined]
    section.recall_at_100_measured = round(chosen.recall, 4)  # type: ignore[attr-defined]
    section.built_on = built_on
    section.chosen = {"b1_ms_p50": chosen.b1_ms_p50, "b1_ms_p99": chosen.b1_ms_p99, "b32_ms": chosen.b32_ms}
    section.timings = timings
    if memory_budget_bytes is not None:
        section.memory_budget_bytes = memory_budget_bytes
    if not section.target_met:
        log.warning("recall@100 target %.3f not reached: best %.4f with %s", target_recall, chosen.recall, factory)
    if report_queries is not None and len(report_queries):
        rq = np.ascontiguousarray(report_queries, dtype=np.float32)
        _, found = index.search(rq, 100)
        section.recall_at_100_report = round(recall_vs_exact(found, exact_topk(vectors, rq, 100)), 4)
        section.report_queries = len(rq)
    if graded is not None:
        qids, qvecs, qrels = graded
        _, found = index.search(np.ascontiguousarray(qvecs, dtype=np.float32), 100)
        section.recall_by_level = recall_by_level(qids, exact_topk(vectors, qvecs, 100), found, list(ids), qrels)
    meta = {"factory": factory, "ntotal": n, "queries": len(queries), "target_recall": target_recall, "k": 100,
            "threads": 1, "built_on": built_on}
    section.curve_json, section.curve_png = write_curve(bundle_dir, chosen, points, meta)
    persist_index(bundle_dir, manifest, index, ids, section, queries)
    log.info("index %s: ntotal=%d nprobe=%s k_factor=%s ef_search=%s recall@100=%.4f (b1 %.3f ms)", factory, n,
             chosen.nprobe, chosen.k_factor, chosen.ef_search, chosen.recall, chosen.b1_ms_p50)
    return section


def _graded_inputs(
    bundle_dir: Path, manifest: BundleManifest, graded: Path | GradedSet | None
) -> tuple[list[str], np.ndarray, dict[str, dict[str, int]]] | None:
    if graded is None:
        return None
    gs = graded if isinstance(graded, GradedSet) else load_graded(graded)
    qids = list(gs.queries)
    vecs = _query_encoder(bundle_dir, manifest).encode_batched([gs.queries[q] for q in qids])
    return qids, vecs, gs.qrels


def build_index(
    bundle_dir: Path | str,
    corpus: Path | str | None,
    *,
    factory: str | None = None,
    batch_size: int = 64,
    n_recall_queries: int = 200,
    target_recall: float = 0.95,
    progress: bool = True,
    seed: int = 0,
    shards_dir: Path | str | None = None,
    memory_budget_bytes: int | None = None,
    opq: bool = False,
    refine: bool = True,
    ann: bool = False,
    graded: Path | GradedSet | None = None,
    use_gpu: bool | None = None,
    threads: int = 1,
    reuse_vectors_from: Path | str | None = None,
    queries: Path | str | None = None,
) -> IndexSection:
    """Build the bundle's index over ``corpus`` (or over encoded shards) and record the tuned point.

    ``reuse_vectors_from``: a bundle of the same model whose index keeps exact vectors (Flat or a
    flat refine store) over the same documents: re-index with another factory without re-encoding.

    ``queries``: the queries the index will serve (text one per line, JSONL, or a search_log /
    exposure log); half tune nprobe/k_factor, the disjoint rest gives ``recall_at_100_report``.
    Without it, paraphrase-like pseudo-queries from the corpus, tuned to the target plus a margin
    (``index_builder.queries``). Queries are encoded with the query tower; recall@100 is against
    exact search, and the manifest says which kind of queries it was measured on.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    assert manifest.model is not None
    if not 0 < target_recall <= 1:
        raise CropsError(ErrorKind.INVALID_INPUT, f"target recall must be in (0, 1], got {target_recall}")
    if use_gpu:
        require_gpu(encode=corpus is not None and shards_dir is None and reuse_vectors_from is None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if corpus is None and shards_dir is None:
        raise CropsError(ErrorKind.INVALID_INPUT, "give a corpus or a folder of encoded shards")
    if shards_dir is not None:
        vectors, ids, info = load_shards(shards_dir, model_id=manifest.model.model_id)
        corpus = corpus or info["corpus"]
        docs = load_corpus(corpus)
        if [d.doc_id for d in docs] != ids:
            raise CropsError(ErrorKind.INVALID_INPUT, f"shards in {shards_dir} were not encoded from {corpus}")
    else:
        assert corpus is not None
        docs = load_corpus(corpus)
        ids = [d.doc_id for d in docs]
        if len(set(ids)) != len(ids):
            raise CropsError(ErrorKind.INVALID_INPUT, f"corpus {corpus} has duplicate document ids")
        if reuse_vectors_from is not None:
            vectors = vectors_from_bundle(reuse_vectors_from, manifest.model.model_id, ids)
        else:
            if use_gpu:  # before the encoding, which can take hours
                ops.require_gpu_buildable(factory or default_factory(
                    len(docs), manifest.model.embedding_dim, ann=ann, memory_budget_bytes=memory_budget_bytes,
                    opq=opq, refine=refine), manifest.model.embedding_dim)
            vectors = encode_corpus(bundle_dir, docs, batch_size=batch_size, progress=progress,
                                    threads=threads, use_gpu=use_gpu)
    timings["encode_s"] = round(time.perf_counter() - t0, 2)
    qs = query_sets(docs, queries, n_recall_queries, seed=seed)
    qenc = _query_encoder(bundle_dir, manifest)
    qvecs = qenc.encode_batched(qs.tune)
    rvecs = qenc.encode_batched(qs.report) if qs.report else None
    return build_from_vectors(
        bundle_dir, vectors, ids, qvecs, factory=factory, target_recall=target_recall, report_queries=rvecs,
        graded=_graded_inputs(bundle_dir, manifest, graded), memory_budget_bytes=memory_budget_bytes,
        opq=opq, refine=refine, ann=ann, corpus=str(corpus), seed=seed, use_gpu=use_gpu, timings=timings,
        tune_margin=qs.margin, queries_kind=qs.kind, queries_source=qs.source, progress=progress,
    )


# ---------------------------------------------------------------- incremental updates


def _open_for_update(bundle_dir: Path, out: Path | str | None) -> tuple[Path, BundleManifest, Any, list[str]]:
    """Load the index of ``bundle_dir``; with ``out``, work on a fresh copy (safe for a live service)."""
    import faiss

    verify_bundle(bundle_dir, require_index=True)
    if out is not None:
        out = Path(out)
        if out.exists():
            raise CropsError(ErrorKind.INVALID_INPUT, f"{out} exists; give a new folder for the updated bundle")
        with atomic_path(out) as tmp:
            shutil.copytree(bundle_dir, tmp)
        bundle_dir = out
    manifest = verify_bundle(bundle_dir, require_index=True)
    assert manifest.index is not None
    index = faiss.read_index(str(bundle_dir / manifest.index.index_file))
    ids = load_id_map(bundle_dir / manifest.index.id_map_file)
    if len(ids) != index.ntotal:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{bundle_dir}: id map has {len(ids)} rows, index {index.ntotal}")
    apply_manifest_params(index, manifest.index)
    return bundle_dir, manifest, index, ids


def _stored_vectors(index: Any) -> np.ndarray | None:
    """All vectors when the index keeps them exactly (Flat, or a flat refine store), else None."""
    import faiss

    top = faiss.downcast_index(index)
    store = faiss.downcast_index(top.refine_index) if isinstance(top, faiss.IndexRefine) else top
    if isinstance(store, faiss.IndexFlat) and store.ntotal > 0:
        return faiss.rev_swig_ptr(store.get_xb(), store.ntotal * store.d).reshape(store.ntotal, store.d).copy()
    return None


def vectors_from_bundle(src: Path | str, model_id: str, ids: Sequence[str]) -> np.ndarray:
    """The exact doc vectors stored in another bundle's index, in the order of ``ids``."""
    import faiss

    m = verify_bundle(src, require_index=True)
    assert m.index is not None
    if m.index.model_id != model_id:
        raise CropsError(ErrorKind.INCOMPATIBLE, f"{src} was indexed by model {m.index.model_id}, not {model_id}")
    vecs = _stored_vectors(faiss.read_index(str(Path(src) / m.index.index_file)))
    if vecs is None:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{src}: index {m.index.factory} keeps no exact vectors")
    pos = {d: i for i, d in enumerate(load_id_map(Path(src) / m.index.id_map_file))}
    missing = [d for d in ids if d not in pos]
    if missing or len(pos) != len(ids):
        raise CropsError(ErrorKind.INVALID_INPUT, f"{src} indexes other documents ({len(missing)} missing)")
    return vecs[[pos[d] for d in ids]]


def _remeasure(bundle_dir: Path, section: IndexSection, index: Any) -> None:
    """Recall@100 of the changed index at its tuned point, on the bundle's held-out query vectors."""
    qfile = section.recall_queries_file
    base = _stored_vectors(index)
    if not qfile or base is None or not (bundle_dir / qfile).is_file():
        section.recall_stale = True
        return
    queries = np.load(bundle_dir / qfile)
    _, found = index.search(queries, 100)
    measured, se = recall_with_error(found, exact_topk(base, queries, 100))
    margin = float((section.model_extra or {}).get("tune_margin") or 0.0)
    section.recall_at_100 = round(measured - margin, 4)
    if margin:
        section.recall_at_100_measured = round(measured, 4)  # type: ignore[attr-defined]
    section.recall_stale = False
    if section.target_recall is not None:  # judged as the tuner judges: the 95 % lower bound
        section.target_met = lower_bound(measured, se) >= tune_goal(section.target_recall, margin)


def _finish_update(
    bundle_dir: Path, manifest: BundleManifest, index: Any, ids: list[str], what: dict[str, Any]
) -> IndexSection:
    assert manifest.index is not None
    section = manifest.index
    section.ntotal = int(index.ntotal)
    _remeasure(bundle_dir, section, index)
    history = list(section.updates)
    history.append({**what, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ntotal": section.ntotal})
    section.updates = history[-50:]
    # A changed index is a new bundle: caches keyed by bundle_id must not serve old results.
    stem = manifest.bundle_id.rsplit("-", 1)[0] if "-" in manifest.bundle_id else manifest.bundle_id
    manifest.bundle_id = f"{stem}-{uuid.uuid4().hex[:8]}"
    persist_index(bundle_dir, manifest, index, ids, section, None)
    return section


def add_docs(
    bundle_dir: Path | str,
    corpus: Path | str,
    *,
    out: Path | str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    on_duplicate: str = "error",
) -> IndexSection:
    """Encode new documents and append them to the bundle's index (no retraining, rows stay stable).

    The IVF centroids and PQ codebooks stay as trained; new uploads are encoded with the same doc
    tower. ``on_duplicate``: "error" refuses ids already indexed, "skip" ignores them.
    """
    bundle_dir, manifest, index, ids = _open_for_update(Path(bundle_dir), out)
    docs = load_corpus(corpus)
    have = set(ids)
    dup = [d.doc_id for d in docs if d.doc_id in have]
    if dup and on_duplicate != "skip":
        raise CropsError(ErrorKind.INVALID_INPUT,
                         f"{len(dup)} ids already indexed (e.g. {dup[0]!r}); remove them first or pass skip")
    docs = [d for d in docs if d.doc_id not in have]
    if len({d.doc_id for d in docs}) != len(docs):
        raise CropsError(ErrorKind.INVALID_INPUT, f"{corpus} has duplicate document ids")
    if docs:
        vecs = encode_corpus(bundle_dir, docs, batch_size=batch_size, progress=progress)
        ops.add_rows(index, vecs, start=len(ids), progress=progress)
        ids = ids + [d.doc_id for d in docs]
    return _finish_update(bundle_dir, manifest, index, ids, {"op": "add", "docs": len(docs), "skipped": len(dup)})


def remove_docs(
    bundle_dir: Path | str, doc_ids: Sequence[str], *, out: Path | str | None = None, missing_ok: bool = True
) -> IndexSection:
    """Remove taken-down videos from the index and the id map without a rebuild."""
    bundle_dir, manifest, index, ids = _open_for_update(Path(bundle_dir), out)
    pos = {d: i for i, d in enumerate(ids)}
    rows = np.array(sorted({pos[d] for d in doc_ids if d in pos}), dtype=np.int64)
    unknown = [d for d in doc_ids if d not in pos]
    if unknown and not missing_ok:
        raise CropsError(ErrorKind.NOT_FOUND, f"{len(unknown)} ids are not in the index (e.g. {unknown[0]!r})")
    if len(rows):
        ops.remove_rows(index, rows)
        gone = set(rows.tolist())
        ids = [d for i, d in enumerate(ids) if i not in gone]
    return _finish_update(bundle_dir, manifest, index, ids,
                          {"op": "remove", "docs": len(rows), "unknown": len(unknown)})
