"""SimulatedLLM (the offline P3 knowledge source) and the reusable evaluation helpers."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from core.errors import CropsError
from world.build import build_world
from world.config import tiny_config
from world.evaluation import bm25_run, dense_run, eval_queries, evaluate_run, exact_search, load_eval_sets
from world.knowledge import SimulatedLLM
from world.ontology import load_ontology


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    build_world(out, tiny_config(**{"n_requests": 1500, "catalog.n_videos": 800}), seed=0, progress=False)
    return out


def test_simulated_llm_is_deterministic_and_knows_every_sense(world: Path) -> None:
    onto = load_ontology()
    senses = set(onto.surface_topics["transformer"])
    llm = SimulatedLLM(world, error_rate=0.0, seed=0)
    example = "Transformer attention explained: self-attention encoder decoder"
    out = llm.generate_labeled("transformer", example, 40)
    assert len(out) == 40 and all(isinstance(g.text, str) and g.text for g in out)
    assert not any(g.is_error for g in out) and {g.topic_id for g in out} <= senses
    assert len({g.topic_id for g in out}) >= 2  # beyond the example's sense: the minority senses too
    assert llm.generate("transformer", example, 5) == SimulatedLLM(world, error_rate=0.0).generate(
        "transformer", example, 5
    )
    assert SimulatedLLM(world, error_rate=0.0, seed=1).generate("transformer", example, 5) != llm.generate(
        "transformer", example, 5
    )


def test_simulated_llm_error_rate_and_typos(world: Path) -> None:
    wrong = SimulatedLLM(world, error_rate=1.0).generate_labeled("ball python care guide", "my snake", 20)
    snake = onto_topic("ball_python")
    assert all(g.is_error and g.topic_id != snake for g in wrong)
    some = SimulatedLLM(world, error_rate=0.3).generate_labeled("ball python care guide", "my snake", 400)
    share = sum(g.is_error for g in some) / len(some)
    assert 0.2 < share < 0.4
    # a query the world never logged, with a typo, is still understood
    llm = SimulatedLLM(world, error_rate=0.0)
    topics, facet, _ = llm.interpret("pyhton tutorial for beginers")
    assert topics == [onto_topic("python_lang")] and facet == "tutorial"
    with pytest.raises(CropsError):
        SimulatedLLM(world, error_rate=2.0)


def onto_topic(key: str) -> int:
    return next(t.topic_id for t in load_ontology().topics if t.key == key)


def test_evaluate_run_perfect_empty_and_bm25(world: Path) -> None:
    sets = load_eval_sets(world)
    perfect: dict[str, list[str]] = {}
    for qrels in sets.values():
        for q, rel in qrels.items():
            ranked = sorted(rel, key=lambda v: -rel[v])
            perfect[q] = ranked + [v for v in perfect.get(q, []) if v not in rel]
    # one query can be in several sets: rank the union so every set sees its positives on top
    for q in perfect:
        gains: dict[str, float] = {}
        for qrels in sets.values():
            for v, g in qrels.get(q, {}).items():
                gains[v] = max(gains.get(v, 0.0), g + (10.0 if q in sets["ct"] and v in sets["ct"][q] else 0.0))
        perfect[q] = sorted(gains, key=lambda v: -gains[v])
    m = evaluate_run(world, perfect)
    assert m["ct"]["all"]["recall@100"] == pytest.approx(1.0)
    assert m["qr"]["all"]["recall@100"] > 0.95
    empty = evaluate_run(world, {})
    assert empty["ct"]["all"]["recall@100"] == 0.0 and empty["graded"]["all"]["ndcg@4"] == 0.0
    assert set(m["ct"]) == {"all", "head", "torso", "tail", "ambiguous"}
    qs = eval_queries(world, max_per_set=30)
    bm = evaluate_run(world, bm25_run(world, qs), only_ranked=True)
    for name, metric in (("ct", "recall@100"), ("qr", "recall@100"), ("graded", "ndcg@4")):
        assert 0.0 < bm[name]["all"][metric] < 1.0 or name == "ct"
        assert 0 < bm[name]["all"]["queries"] <= len(qs)


class FakeHashEncoder:
    """Unit-test fake (not a model): bag-of-words hashed into 64 dims, L2-normalised."""

    def encode(self, texts: list[str], batch_size: int = 0, *, normalized: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, zlib.crc32(w.encode()) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_exact_search_and_dense_run_plumbing(world: Path) -> None:
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((7, 16)).astype(np.float32), rng.standard_normal((300, 16)).astype(np.float32)
    top = exact_search(q, d, 10)
    assert (top == np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :10]).all()
    qs = eval_queries(world, max_per_set=10)
    run = dense_run(world, qs, FakeHashEncoder().encode, k=20)
    assert set(run) == set(qs) and all(len(v) == 20 for v in run.values())
    assert not (world / "cache").exists()  # no cache key, no cache
    cached = dense_run(world, qs, FakeHashEncoder().encode, k=20, cache_key="fake")
    assert cached == run and len(list((world / "cache").glob("fake_docs_*.npy"))) == 1


def test_crops_eval_world_through_the_serving_path(world: Path, model_bundle: Path, tmp_path: Path) -> None:
    """`crops eval world`: the bundle (ONNX tower + faiss index over the world's catalog) gives the
    same Table-1 metrics as the evaluation helpers on the same ranking; wrong bundles are refused."""
    import json
    import shutil

    from typer.testing import CliRunner

    from crops.cli import app
    from index_builder.build import build_index
    from service.engine import Retriever

    b = tmp_path / "b"
    shutil.copytree(model_bundle, b)
    r = CliRunner().invoke(app, ["eval", "world", "--world", str(world), "--bundle", str(b)])
    assert r.exit_code != 0 and "has no index" in str(r.exception)
    build_index(b, world / "videos.parquet", progress=False, n_recall_queries=20)
    r = CliRunner().invoke(app, ["eval", "world", "--world", str(world), "--bundle", str(b), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    qs = eval_queries(world)
    ranked = {q: res.ids for q, res in zip(qs, Retriever(b).retrieve(qs, k=100)[0], strict=True)}
    want = evaluate_run(world, ranked)
    assert got["ct_recall@100"] == pytest.approx(want["ct"]["all"]["recall@100"], abs=1e-4)
    assert got["ndcg@4"] == pytest.approx(want["graded"]["all"]["ndcg@4"], abs=1e-4)
    assert 0.3 < got["ct_recall@100"] <= 1.0 and got["queries"] == len(qs)
    other = tmp_path / "other"
    shutil.copytree(model_bundle, other)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"x{i}", "title": f"video {i}"}) + "\n" for i in range(60)))
    build_index(other, corpus, progress=False, n_recall_queries=10)
    r = CliRunner().invoke(app, ["eval", "world", "--world", str(world), "--bundle", str(other)])
    assert r.exit_code != 0 and "covers 0.0%" in str(r.exception)


def test_grade_described_follows_the_world_grading_rules() -> None:
    from world.relevance import grade_described

    # head need: the topic
    assert grade_described({1, 2}, {10, 20}, None, None, 2, 99, None) == 3
    assert grade_described({1}, {10}, None, None, 3, 10, None) == 0
    # torso need: the intent; same topic, other facet is grade 1
    assert grade_described({1}, {10}, "tutorial", None, 1, 10, None) == 3
    assert grade_described({1}, {10}, "tutorial", None, 1, 11, None) == 1
    assert grade_described({1}, {10}, "tutorial", None, 2, 20, None) == 0
    # tail need: intent + modifier
    assert grade_described({1}, {10}, "tutorial", "beginner", 1, 10, "beginner") == 3
    assert grade_described({1}, {10}, "tutorial", "beginner", 1, 10, None) == 2
    assert grade_described({1}, {10}, "tutorial", "beginner", 1, 11, "beginner") == 2
    assert grade_described({1}, {10}, "tutorial", "beginner", 1, 11, None) == 1
    assert grade_described({1}, {10}, "tutorial", "beginner", 5, 50, "beginner") == 0


def test_simulated_llm_descriptions_say_what_they_are_about(world: Path) -> None:
    from world.evaluation import world_ontology
    from world.knowledge import SimulatedLLM

    onto = world_ontology(world)
    llm = SimulatedLLM(world, error_rate=0.0, seed=1)
    gen = llm.generate_labeled("python tutorial", "learn python programming basics", 12)
    assert gen and all(not g.is_error for g in gen)
    for g in gen:
        assert g.intent_id in {i for (t, _f), i in onto.intent_of.items() if t == g.topic_id}
        assert g.modifier is None or g.modifier in onto.topics[g.topic_id].modifiers
