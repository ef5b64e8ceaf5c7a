"""Exporter: the parity gate fails on corrupted models with the numbers; int8/fp16 variants are gated."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import CropsError, ErrorKind
from core.manifest import read_manifest, verify_bundle
from core.onnx_encoder import OnnxEncoder, available_providers, variant_model_path

CUDA = "CUDAExecutionProvider" in available_providers()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(clean, corrupted) checkpoints written by the trainer's own ``TextEncoder.save``."""
    import torch

    from training.encoder import TextEncoder

    root = tmp_path_factory.mktemp("ckpt")
    enc = TextEncoder(max_length=32)
    enc.save(root / "clean")
    with torch.no_grad():  # a bit-rot sized perturbation of one attention projection
        w = enc.model.encoder.layer[0].attention.self.query.weight
        w.add_(0.02 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    enc.save(root / "corrupt")
    return root / "clean", root / "corrupt"


def test_parity_gate_fails_on_a_bundle_that_does_not_reproduce_the_checkpoint(
    model_bundle: Path, checkpoints: tuple[Path, Path]
) -> None:
    from model_export.export import verify_parity

    clean, corrupt = checkpoints
    assert verify_parity(model_bundle, clean) <= 1e-4
    with pytest.raises(CropsError) as exc:
        verify_parity(model_bundle, corrupt)
    assert exc.value.kind is ErrorKind.PARITY_FAILED
    msg = str(exc.value)
    assert "query tower" in msg and "max abs error" in msg and "exceeds tolerance 0.0001" in msg
    err = float(msg.split("max abs error ")[1].split()[0])
    assert err > 1e-3  # the number is the real error, far above the gate


def test_export_refuses_a_corrupted_graph_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Corrupt one weight of the exported ONNX graph: export fails with the numbers, no bundle."""
    import onnx
    from onnx import numpy_helper

    import model_export.export as ex

    real = ex.export_tower

    def corrupting_export(model_dir: Path, out_path: Path, **kw: object) -> None:
        real(model_dir, out_path, **kw)  # type: ignore[arg-type]
        model = onnx.load(str(out_path))
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 2 else 0)
        arr = numpy_helper.to_array(init).copy()
        arr *= 1.01
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(model, str(out_path))

    monkeypatch.setattr(ex, "export_tower", corrupting_export)
    out = tmp_path / "bundle"
    with pytest.raises(CropsError) as exc:
        ex.export_bundle(out, max_query_tokens=16, max_doc_tokens=32)
    assert exc.value.kind is ErrorKind.PARITY_FAILED
    assert "exceeds tolerance" in str(exc.value)
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))


def _op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_exported_towers_are_fused_for_onnx_runtime(model_bundle: Path) -> None:
    """Traced with eager attention, every layer fuses into ONNX Runtime's Attention (towers.onnx)."""
    import onnx

    for name in ("query_encoder.onnx", "doc_encoder.onnx"):
        path = model_bundle / name
        if path.is_file():
            ops = _op_types(path)
            assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= ops, ops
            assert "Softmax" not in ops and "IsNaN" not in ops  # no unfused attention left
            assert len(onnx.load(str(path)).graph.node) < 100


def test_int8_variant_is_measured_recorded_and_servable(model_bundle: Path, tmp_path: Path) -> None:
    from model_export.variants import build_variants

    b = tmp_path / "b"
    shutil.copytree(model_bundle, b)
    (rep,) = build_variants(b, ["int8"], n_docs=400, n_queries=60)
    assert rep.accepted and rep.mean_cosine is not None and rep.mean_cosine > 0.98
    m = verify_bundle(b)  # the variant file is checksummed; model_id (fp32 towers) unchanged
    assert m.model is not None and m.model.model_id == read_manifest(model_bundle).model.model_id  # type: ignore[union-attr]
    v = m.model.variants["int8"]
    assert v.precision == "int8" and v.file in m.files
    assert v.recall_at_100_delta == rep.recall_delta and -0.10 <= v.recall_at_100_delta < 0
    assert v.mean_cosine_to_fp32 == rep.mean_cosine and v.eval_queries == 60
    path, name = variant_model_path(b, m.model, "auto", gpu=False)
    assert name == "int8" and path == b / v.file
    enc = OnnxEncoder(path, b / "tokenizer.json", 32, use_gpu=False)
    ref = OnnxEncoder(b / "query_encoder.onnx", b / "tokenizer.json", 32, use_gpu=False)
    q = ["funny cat compilation", "how to fix a leaking tap"]
    assert float(np.min(np.sum(enc.encode(q) * ref.encode(q), axis=1))) > 0.97
    assert "QAttention" in _op_types(path)  # the fused attention's QKV projection is int8 too
    # MatMul weights are int8; the 47 MB token-embedding table stays fp32 (Gather lookups are cheap)
    assert path.stat().st_size < 0.7 * (b / "query_encoder.onnx").stat().st_size
    # fp16 needs CUDA: on CPU hosts it is skipped with the reason, never silently "accepted"
    if not CUDA:
        (rep16,) = build_variants(b, ["fp16"], n_docs=50, n_queries=10)
        assert not rep16.accepted and "CUDA" in rep16.reason
        assert "fp16" not in verify_bundle(b).model.variants  # type: ignore[union-attr]


def test_variant_above_the_recall_loss_budget_is_refused(model_bundle: Path, tmp_path: Path) -> None:
    from model_export.variants import build_variants

    b = tmp_path / "b"
    shutil.copytree(model_bundle, b)
    (rep,) = build_variants(b, ["int8"], n_docs=400, n_queries=60, max_recall_loss=0.0)
    assert rep.recall_delta is not None and rep.recall_delta < 0  # int8 moves some top-100 borders
    assert not rep.accepted and "recall@100 loss" in rep.reason and "> max 0.0000" in rep.reason
    m = verify_bundle(b)
    assert m.model is not None and "int8" not in m.model.variants
    assert not (b / "query_encoder.int8.onnx").exists()
    refused = m.model.variants_refused["int8"]
    assert refused["recall_at_100_delta"] == rep.recall_delta
    with pytest.raises(CropsError, match="no 'int8' query-tower variant"):
        variant_model_path(b, m.model, "int8")
    with pytest.raises(CropsError, match="unknown variant"):
        build_variants(b, ["int4"])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="onnxruntime has no CUDA execution provider: fp16/CUDA path not exercised")
def test_fp16_variant_and_cuda_encoder_on_gpu(model_bundle: Path, tmp_path: Path) -> None:
    from model_export.variants import build_variants

    b = tmp_path / "b"
    shutil.copytree(model_bundle, b)
    reports = build_variants(b, ["int8", "fp16"], n_docs=400, n_queries=60)
    fp16 = next(r for r in reports if r.name == "fp16")
    assert fp16.accepted and fp16.mean_cosine is not None and fp16.mean_cosine > 0.999
    assert "CUDAExecutionProvider" in fp16.providers
    m = verify_bundle(b)
    assert m.model is not None
    _path, name = variant_model_path(b, m.model, "auto")
    assert name == "fp16"
    enc = OnnxEncoder(b / "query_encoder.onnx", b / "tokenizer.json", 32, use_gpu=True)
    assert enc.providers[0] == "CUDAExecutionProvider"
    cpu = OnnxEncoder(b / "query_encoder.onnx", b / "tokenizer.json", 32, use_gpu=False)
    q = ["funny cat compilation", "how to fix a leaking tap"]
    assert np.abs(enc.encode(q) - cpu.encode(q)).max() < 1e-3


def test_a_tower_traced_with_sdpa_attention_does_not_fuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the export switches to eager attention: traced as it trains (SDPA), ONNX Runtime's
    optimiser finds no attention to fuse and the graph keeps its unfused softmax and NaN masking."""
    import contextlib

    from core.tokenizer import default_model_dir
    from towers import onnx as tower_onnx
    from towers.encoder import SentenceEncoder

    module = SentenceEncoder(default_model_dir())
    hf = module.transformer
    assert hf.config._attn_implementation == "sdpa"  # what training runs

    @contextlib.contextmanager
    def as_trained(mod):  # type: ignore[no-untyped-def]
        yield getattr(getattr(mod, "transformer", None), "config", None)

    monkeypatch.setattr(tower_onnx, "_eager_attention", as_trained)
    path = tmp_path / "sdpa.onnx"
    tower_onnx.export_onnx(module, path)
    ops = _op_types(path)
    assert "Attention" not in ops and "Softmax" in ops, ops
