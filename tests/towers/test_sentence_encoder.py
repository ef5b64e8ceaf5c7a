"""One torch encoder from the checkpoint's own sentence-transformers config: train → export → parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from core.errors import CropsError, ErrorKind  # noqa: E402
from tests.tiny_models import write_tiny_bert  # noqa: E402
from towers import SentenceEncoder, read_st_config  # noqa: E402

QUERIES = ["cat video", "how to fix a power transformer", "lofi beats to study"]
DOCS = ["a cat chases a laser dot", "repairing a humming transformer", "chill music for work", "pizza dough"]


def make_tiny_checkpoint(root: Path, pooling: str = "cls", dense_out: int = 16) -> Path:
    """A random 2-layer BERT with the MiniLM tokenizer, CLS pooling, a Tanh Dense layer and Normalize."""
    from safetensors.torch import save_file

    write_tiny_bert(root)
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": pooling == "max",
            }
        )
    )
    (root / "2_Dense").mkdir()
    (root / "2_Dense" / "config.json").write_text(
        json.dumps(
            {
                "in_features": 32,
                "out_features": dense_out,
                "bias": True,
                "activation_function": "torch.nn.modules.activation.Tanh",
            }
        )
    )
    lin = torch.nn.Linear(32, dense_out)
    save_file(
        {"linear.weight": lin.weight.detach(), "linear.bias": lin.bias.detach()},
        str(root / "2_Dense" / "model.safetensors"),
    )
    (root / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
                {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def test_config_is_read_not_assumed(tiny: Path) -> None:
    st = read_st_config(tiny)
    assert st.pooling == ("cls",) and st.normalize and st.declared
    assert [(d.in_features, d.out_features, d.activation) for d in st.dense] == [(32, 16, "Tanh")]
    enc = SentenceEncoder(tiny)
    assert enc.dim == 16


def test_matches_sentence_transformers_itself(tiny: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    from core.normalize import normalize_text
    from core.tokenizer import encode_batch, load_tokenizer

    texts = [normalize_text(t) for t in QUERIES + DOCS]
    ref = st.SentenceTransformer(str(tiny), device="cpu").encode(texts, convert_to_numpy=True)
    ids, mask = encode_batch(load_tokenizer(tiny, 128), texts)
    with torch.no_grad():
        ours = SentenceEncoder(tiny).eval()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert np.abs(ours - ref).max() < 1e-5


def test_pooling_modes_differ(tiny: Path, tmp_path: Path) -> None:
    mean = make_tiny_checkpoint(tmp_path / "mean", pooling="mean")
    ids = torch.tensor([[101, 4937, 2678, 102]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = SentenceEncoder(tiny).eval()(ids, mask)
        b = SentenceEncoder(mean).eval()(ids, mask)
    assert float((a - b).abs().max()) > 1e-3  # same weights, other pooling: other vectors


def test_unknown_module_is_refused(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    mods = json.loads((bad / "modules.json").read_text())
    mods.append({"idx": 4, "name": "4", "path": "4_X", "type": "sentence_transformers.models.LayerNorm"})
    (bad / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(CropsError, match="LayerNorm"):
        read_st_config(bad)


@pytest.mark.slow
def test_cls_dense_checkpoint_trains_and_exports_with_parity(tiny: Path, tmp_path: Path) -> None:
    from model_export.export import export_bundle
    from training.trainer.model import DualEncoder

    model = DualEncoder(tiny, shared=True, max_query_tokens=8, max_doc_tokens=16)
    dense = model.query_tower.encoder.dense[0].linear.weight
    before = dense.detach().clone()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    q = model.embed_queries(QUERIES)
    d = model.embed_docs(DOCS[:3])
    loss = torch.nn.functional.cross_entropy(q @ d.T / 0.05, torch.arange(3))
    loss.backward()
    opt.step()
    assert float((dense.detach() - before).abs().max()) > 0  # the Dense layer is part of what trains
    ckpt = model.save(tmp_path / "ckpt")
    assert read_st_config(ckpt).pooling == ("cls",) and len(read_st_config(ckpt).dense) == 1

    m = export_bundle(tmp_path / "bundle", ckpt, variants=())
    assert m.model is not None
    assert m.model.pooling == "cls" and m.model.dense_layers == 1 and m.model.embedding_dim == 16
    assert m.model.parity_max_abs_err < 1e-4
    assert (m.model.max_query_tokens, m.model.max_doc_tokens) == (8, 16)  # the trained limits
    from core.onnx_encoder import OnnxEncoder

    onnx = OnnxEncoder(tmp_path / "bundle" / m.model.query_onnx, tmp_path / "bundle" / m.model.tokenizer, 8)
    with torch.no_grad():
        trained = model.encode(QUERIES, side="q", normalized=False)
    assert np.abs(onnx.encode(QUERIES) - trained).max() < 1e-4  # serving = the trained tower

    with pytest.raises(CropsError) as err:
        export_bundle(tmp_path / "skew", ckpt, max_query_tokens=64, variants=())
    assert err.value.kind is ErrorKind.INCOMPATIBLE and "trained with 8" in err.value.message
    assert not (tmp_path / "skew").exists()
    m2 = export_bundle(tmp_path / "skew", ckpt, max_query_tokens=64, allow_token_mismatch=True, variants=())
    assert m2.model is not None and m2.model.token_limit_mismatch == ["query tokens 64 (trained with 8)"]


def test_a_newer_checkpoint_layout_is_refused(tiny: Path, tmp_path: Path) -> None:
    from towers.checkpoint import resolve_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny, ckpt)
    assert resolve_checkpoint(ckpt)[0] == ckpt
    (ckpt / "crops_checkpoint.json").write_text(json.dumps({"checkpoint_schema_version": 99}))
    with pytest.raises(CropsError) as err:
        resolve_checkpoint(ckpt)
    assert err.value.kind is ErrorKind.INCOMPATIBLE
