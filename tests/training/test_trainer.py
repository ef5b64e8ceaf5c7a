"""Trainer on hand-made samples with a tiny real BERT: batching, recipes, loss, resume, checkpoint, DDP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from core.errors import CropsError
from training.trainer import BatchSampler, DualEncoder, TrainConfig, build_training_set, train
from training.trainer.data import TrainingSet, text_key

ROWS = [
    {"query": "Cat videos", "video_id": "v1", "text": None, "level": 4, "source": "p0_click"},
    {"query": "cat videos", "video_id": "v2", "text": None, "level": 5, "source": "p1_reformulation"},
    {"query": "cat videos", "video_id": "v3", "text": None, "level": 3, "source": "exposed_unclicked"},
    {"query": "cat videos", "video_id": None, "text": "A kitten video", "level": 4, "source": "p3_llm"},
    {"query": "pasta", "video_id": "v3", "text": None, "level": 4, "source": "p0_click"},
    {"query": "pasta", "video_id": "v1", "text": None, "level": 1, "source": "prerank_filtered"},
    {"query": "pasta", "video_id": "v9", "text": None, "level": 4, "source": "p0_click"},  # unknown video
    {"query": "no positive", "video_id": "v4", "text": None, "level": 2, "source": "rank_unexposed"},
]
VIDEOS = {"v1": "cat playing", "v2": "kitten sleeping", "v3": "pasta recipe", "v4": "drum solo"}


def test_groups_levels_and_cross_query_labels() -> None:
    """The old batch (an ablation): a query takes its label on any doc of the batch."""
    ts = build_training_set(ROWS, VIDEOS)
    assert ts.queries == ["cat videos", "pasta"]  # normalised; "no positive" has no level >= 4
    assert ts.groups[0] == {"v1": 4, "v2": 5, "v3": 3, text_key("a kitten video"): 4}
    assert "v9" not in ts.groups[1]
    b = BatchSampler(ts, 2, 8, seed=0, sampling="stratified", batch_labels="inherit").batch(0)
    col = {k: i for i, k in enumerate(b.doc_keys)}
    qi = {q: i for i, q in enumerate(b.queries)}
    # v3 is a level-3 negative for "cat videos" and a positive (4) for "pasta", whoever brought it
    assert b.levels[qi["cat videos"], col["v3"]] == 3 and b.levels[qi["pasta"], col["v3"]] == 4
    assert b.levels[qi["pasta"], col["v2"]] == 0  # in-batch negative
    assert len(set(b.doc_keys)) == len(b.doc_keys)
    # deterministic per (seed, step)
    again = BatchSampler(ts, 2, 8, seed=0, sampling="stratified", batch_labels="inherit").batch(0)
    assert again.doc_keys == b.doc_keys and torch.equal(again.levels, b.levels)


def test_hla_batch_uses_only_own_labels_and_masks_foreign_positives() -> None:
    """The paper's batch: a query's levels only on the docs it drew; another query's doc is level 0,
    or masked when it is one of this query's labelled positives."""
    from training.losses import IGNORE

    rows = [
        {"query": "a", "video_id": "x", "level": 4, "source": "p0_click"},
        {"query": "a", "video_id": "shared", "level": 4, "source": "p0_click"},
        {"query": "a", "video_id": "low", "level": 1, "source": "prerank_filtered"},
        {"query": "b", "video_id": "y", "level": 5, "source": "p1_reformulation"},
        {"query": "b", "video_id": "low", "level": 3, "source": "exposed_unclicked"},
    ]
    videos = {str(r["video_id"]): str(r["video_id"]) for r in rows}
    # "shared" is a positive of "a" and a level-2 doc of "b": when "b" draws it, "a" must ignore it
    rows_b = [*rows, {"query": "b", "video_id": "shared", "level": 2, "source": "rank_unexposed"}]
    ts = build_training_set(rows_b, videos)
    n_masked = 0
    for step in range(12):
        b = BatchSampler(ts, 2, 2, seed=step, quota={5: 1, 4: 1, 2: 1, 1: 1}).batch(step)
        n_masked += int((b.levels == IGNORE).sum())
        col = {k: i for i, k in enumerate(b.doc_keys)}
        for qi, q in enumerate(b.queries):
            grp = ts.groups[ts.index[q]]
            own = set(b.drawn[qi])
            for d, j in col.items():
                lvl = int(b.levels[qi, j])
                if d in own:
                    assert lvl == grp[d]
                elif grp.get(d, 0) >= 4:
                    assert lvl == IGNORE
                else:
                    assert lvl == 0  # labelled 1-3 for q but drawn by the other query: level 0
    assert n_masked > 0


def test_quota_draws_levels_as_configured() -> None:
    from training.trainer.data import batch_stats, parse_quota

    ts = _one_query_set(30)
    s = BatchSampler(ts, 1, 8, seed=0, quota=parse_quota("5:1,4:3,3:1,2:1,1:2"))
    for step in range(10):
        keys = s.batch(step).doc_keys
        assert len(keys) == 8 and {"reform", "shown", "ranked"} <= set(keys)
        assert sum(k.startswith("c") for k in keys) == 3 and sum(k.startswith("f") for k in keys) == 2
    stats = batch_stats(s, range(10), grade=lambda q, d: 3 if d.startswith("c") else 0)
    assert stats["drawn_per_level"] == {"5": 1.0, "4": 3.0, "3": 1.0, "2": 1.0, "1": 2.0}
    # one query, no other docs in the batch: level-1 docs have nothing below them, so no term
    assert "1" not in stats["terms_per_level"] and stats["terms_per_level"]["5"] == 1.0
    assert stats["grade_mix"]["4"] == {"3": 1.0}
    # a level with too few docs gives its slots to the others (positives capped at half)
    short = BatchSampler(ts, 1, 8, seed=0, quota=parse_quota("5:4,3:1"))
    keys = short.batch(0).doc_keys
    assert len(keys) == 8 and "reform" in keys and sum(k.startswith("c") for k in keys) == 3
    with pytest.raises(CropsError):
        parse_quota("5-1")
    with pytest.raises(CropsError):
        TrainConfig(batch_labels="theirs").validate()


def _one_query_set(n_clicks: int) -> TrainingSet:
    rows = [{"query": "q", "video_id": f"c{i}", "level": 4, "source": "p0_click"} for i in range(n_clicks)]
    rows += [{"query": "q", "video_id": "reform", "level": 5, "source": "p1_reformulation"}]
    rows += [{"query": "q", "video_id": f"f{i}", "level": 1, "source": "prerank_filtered"} for i in range(40)]
    rows += [{"query": "q", "video_id": "ranked", "level": 2, "source": "rank_unexposed"}]
    rows += [{"query": "q", "video_id": "shown", "level": 3, "source": "exposed_unclicked"}]
    videos = {str(r["video_id"]): "t" for r in rows}
    return build_training_set(rows, videos)


def test_stratified_sampling_keeps_rare_levels() -> None:
    """Round-robin over levels: the one reformulation positive among 30 clicks and the one doc of
    each of levels 3 and 2 among 40 pre-rank-filtered ones are drawn at every step; uniform sampling
    draws them rarely."""
    ts = _one_query_set(30)
    strat = BatchSampler(ts, 1, 8, seed=0, sampling="stratified")
    uniform = BatchSampler(ts, 1, 8, seed=0, sampling="uniform")
    for step in range(20):
        keys = set(strat.batch(step).doc_keys)
        assert {"reform", "shown", "ranked"} <= keys
        assert len(keys) == 8 and sum(k.startswith("c") for k in keys) == 3  # 4 positives, 4 lower
    hits = sum("reform" in uniform.batch(step).doc_keys for step in range(20))
    assert hits < 10  # 4 of 31 positives: about 2.6 of 20 steps
    with pytest.raises(CropsError):
        TrainConfig(sampling="by-source").validate()


def test_source_filter_and_binary_map() -> None:
    ts = build_training_set(
        ROWS,
        VIDEOS,
        sources=("p0_click", "prerank_filtered"),
        level_map=lambda lvl, src: 1 if lvl >= 4 else 0,
        pos_level=1,
    )
    assert ts.groups[0] == {"v1": 1} and ts.groups[1] == {"v3": 1, "v1": 0}


def test_cached_top_layer_matches_full_forward(tiny_bert: Path) -> None:
    full = DualEncoder(tiny_bert, n_train_layers=0)
    top = DualEncoder(tiny_bert, n_train_layers=1)
    texts = ["cat playing piano", "a", "substation voltage grid tour video"]
    a = full.encode(texts)
    b = top.encode(texts)
    assert abs(a - b).max() < 1e-3  # cache is fp16
    frozen = [n for n, p in top.named_parameters() if not p.requires_grad]
    assert any("embeddings" in n for n in frozen) and any("layer.0." in n for n in frozen)
    assert all("layer.1." not in n for n in frozen)


@pytest.mark.parametrize("recipe", ["full", "top1", "adapter"])
def test_training_lowers_loss_and_writes_checkpoint(tiny_bert: Path, tmp_path: Path, recipe: str) -> None:
    from towers.checkpoint import resolve_checkpoint

    ts = build_training_set(ROWS, VIDEOS)
    cfg = TrainConfig(
        steps=25,
        batch_queries=2,
        docs_per_query=4,
        lr=5e-3 if recipe == "adapter" else 1e-3,
        warmup_steps=1,
        n_train_layers=1 if recipe == "top1" else 0,
        adapter=recipe == "adapter",
        shared_towers=recipe != "full",
        device="cpu",
    )
    res = train(ts, cfg, tmp_path / "run", model_dir=tiny_bert, progress=False)
    assert sum(res.losses[-5:]) < sum(res.losses[:5])
    if recipe == "adapter":
        assert (res.checkpoint / "adapter.pt").is_file()
        return
    _, d_dir, meta = resolve_checkpoint(res.checkpoint)  # what `crops export --checkpoint` reads
    assert (d_dir is not None) == (recipe == "full")  # separate towers → query/ and doc/
    assert meta["training"]["config"]["steps"] == 25


def test_adapter_checkpoint_exports_to_onnx_towers(tiny_bert: Path, tmp_path: Path) -> None:
    """The CPU recipe's output is what `crops export --checkpoint` takes: each tower's linear adapter
    is folded into its ONNX graph, which reproduces the trainer's own embeddings."""
    from core.manifest import verify_bundle
    from core.onnx_encoder import OnnxEncoder
    from model_export.export import export_bundle, verify_parity

    ts = build_training_set(ROWS, VIDEOS)
    cfg = TrainConfig(steps=20, batch_queries=2, docs_per_query=4, lr=5e-2, warmup_steps=1,
                      adapter=True, shared_towers=False, device="cpu")
    res = train(ts, cfg, tmp_path / "run", model_dir=tiny_bert, progress=False)
    bundle = tmp_path / "bundle"
    m = export_bundle(bundle, res.checkpoint, max_query_tokens=16, max_doc_tokens=32)
    assert m.model is not None and m.model.doc_onnx == "doc_encoder.onnx" and m.model.parity_max_abs_err < 1e-4
    assert verify_parity(bundle, res.checkpoint) < 1e-4

    ref = DualEncoder(tiny_bert, shared=False, adapter=True, max_query_tokens=16, max_doc_tokens=32)
    state = torch.load(res.checkpoint / "adapter.pt", weights_only=True)
    ref.q_adapter.load_state_dict(state["q"])
    ref.d_adapter.load_state_dict(state["d"])
    texts = ["cat videos", "pasta recipe for two", "drum solo"]
    assert ref.q_pooled is not None and ref.d_pooled is not None
    ref.q_pooled.add(texts)
    ref.d_pooled.add(texts)
    man = verify_bundle(bundle)
    assert man.model is not None
    for side, onnx in (("q", man.model.query_onnx), ("d", "doc_encoder.onnx")):
        got = OnnxEncoder(bundle / onnx, bundle / "tokenizer.json", 16).encode(texts)
        assert abs(got - ref.encode(texts, side=side)).max() < 2e-3  # the pooled cache is fp16
    q = OnnxEncoder(bundle / "query_encoder.onnx", bundle / "tokenizer.json", 16).encode(texts)
    d = OnnxEncoder(bundle / "doc_encoder.onnx", bundle / "tokenizer.json", 16).encode(texts)
    assert abs(q - d).max() > 1e-3  # the two towers' adapters were trained apart


def test_resume_gives_the_same_model(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts = build_training_set(ROWS, VIDEOS)
    cfg = TrainConfig(
        steps=8, batch_queries=2, docs_per_query=4, lr=1e-3, warmup_steps=1, checkpoint_every=3, device="cpu"
    )
    straight = train(ts, cfg, tmp_path / "a", model_dir=tiny_bert, progress=False)

    original = BatchSampler.batch

    def crash_at_7(self: BatchSampler, step: int):  # type: ignore[no-untyped-def]
        if step == 7:
            raise RuntimeError("simulated crash")
        return original(self, step)

    monkeypatch.setattr(BatchSampler, "batch", crash_at_7)
    with pytest.raises(RuntimeError, match="simulated"):
        train(ts, cfg, tmp_path / "b", model_dir=tiny_bert, progress=False)
    assert (tmp_path / "b" / "train_state.pt").is_file()
    monkeypatch.setattr(BatchSampler, "batch", original)
    resumed = train(ts, cfg, tmp_path / "b", model_dir=tiny_bert, progress=False)
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-5)
    assert not (tmp_path / "b" / "train_state.pt").exists()


def _ddp_worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    ts = build_training_set(ROWS, VIDEOS)
    cfg = TrainConfig(steps=4, batch_queries=1, docs_per_query=4, lr=1e-3, warmup_steps=1, device="cpu")
    model = DualEncoder(model_dir)
    res = train(ts, cfg, out, model=model, progress=False)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    Path(out, f"rank{rank}.json").write_text(json.dumps({"sum": float(flat.sum()), "loss": res.losses}))
    dist.destroy_process_group()


def test_ddp_two_ranks_keep_identical_weights(tiny_bert: Path, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tiny_bert), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["sum"] == pytest.approx(r1["sum"], rel=1e-6)  # gradients were averaged across ranks
    assert r0["loss"] != r1["loss"]  # each rank trained on its own share of the batch
    assert (tmp_path / "checkpoint" / "config.json").is_file()


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    from core.errors import CropsError

    ts = build_training_set(ROWS, VIDEOS)
    with pytest.raises(CropsError, match="loss must be"):
        train(ts, TrainConfig(loss="triplet"), tmp_path)
    with pytest.raises(CropsError, match="no query has a positive"):
        build_training_set(ROWS[-1:], VIDEOS)
