"""Export → index → retrieve, with the real exporter, onnxruntime and faiss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import CropsError, ErrorKind
from core.manifest import read_manifest, verify_bundle, write_manifest
from core.onnx_encoder import OnnxEncoder


def test_export_records_parity_and_checksums(model_bundle: Path) -> None:
    m = verify_bundle(model_bundle)
    assert m.model is not None
    assert m.model.parity_max_abs_err < m.model.parity_tolerance <= 1e-4
    assert m.model.embedding_dim == 384
    assert {"query_encoder.onnx", "tokenizer.json"} <= set(m.files)
    assert m.index is None


def test_onnx_encoder_gives_unit_vectors_and_batch_equals_single(model_bundle: Path) -> None:
    enc = OnnxEncoder(model_bundle / "query_encoder.onnx", model_bundle / "tokenizer.json", 32)
    texts = ["cat video", "power transformer repair tutorial for beginners"]
    batch = enc.encode(texts)
    singles = np.vstack([enc.encode([t]) for t in texts])
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.abs(batch - singles).max() < 1e-5  # padding must not leak into the pooled vector
    # semantic sanity: the cat query is closer to a cat title than to a transformer title
    docs = enc.encode(["funny kitten compilation", "high voltage substation transformer"])
    assert float(batch[0] @ docs[0]) > float(batch[0] @ docs[1])


def test_flat_index_has_exact_recall_and_retriever_finds_the_topic(tiny_bundle: Path) -> None:
    from service.engine import Retriever

    m = verify_bundle(tiny_bundle, require_index=True)
    assert m.index is not None and m.model is not None
    assert m.index.factory == "Flat" and m.index.ntotal == 600
    assert m.index.recall_at_100 == 1.0
    assert m.index.model_id == m.model.model_id
    r = Retriever(tiny_bundle)
    (res,), timings = r.retrieve(["funny cat compilation"], k=100)
    assert len(res.ids) == 100 and len(set(res.ids)) == 100
    assert res.scores == sorted(res.scores, reverse=True)
    corpus_rows = {row["_id"]: row for row in map(json.loads, Path(m.index.corpus or "").read_text().splitlines())}
    top10 = [corpus_rows[i]["text"] for i in res.ids[:10]]
    assert sum("#cats" in t for t in top10) >= 8
    assert timings.encode_ms > 0 and timings.search_ms > 0


def test_ivf_index_is_tuned_to_the_recall_target(model_bundle: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    from index_builder.build import build_index

    b = tmp_path / "ivf"
    shutil.copytree(model_bundle, b)
    sec = build_index(b, tiny_corpus, factory="IVF16,Flat", target_recall=0.9, progress=False,
                      n_recall_queries=40)
    assert sec.nprobe is not None and 1 <= sec.nprobe <= 16
    assert sec.recall_at_100 is not None and sec.recall_at_100 >= 0.9
    assert read_manifest(b).index == sec


def test_bad_factory_is_a_clear_error(model_bundle: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    from index_builder.build import build_index

    b = tmp_path / "bad"
    shutil.copytree(model_bundle, b)
    with pytest.raises(CropsError) as exc:
        build_index(b, tiny_corpus, factory="NotAnIndex42", progress=False)
    assert exc.value.kind is ErrorKind.INVALID_INPUT
    assert read_manifest(b).index is None  # nothing half-written into the manifest


def test_retriever_refuses_index_from_another_model(bundle_copy: Path) -> None:
    from service.engine import Retriever

    m = read_manifest(bundle_copy)
    assert m.index is not None
    m.index.model_id = "0" * 16
    write_manifest(bundle_copy, m)
    with pytest.raises(CropsError) as exc:
        Retriever(bundle_copy)
    assert exc.value.kind is ErrorKind.INCOMPATIBLE


def test_export_refuses_to_overwrite_without_force(model_bundle: Path) -> None:
    from model_export.export import export_bundle

    with pytest.raises(CropsError, match="--force"):
        export_bundle(model_bundle)
