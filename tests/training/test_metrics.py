"""Evaluation metrics against pytrec_eval, and the by-class / never-exposed summary."""

from __future__ import annotations

import random

import pytest
import pytrec_eval

from training.experiment.evaluate import EvalSet, exact_search, per_query, summarise


def _random_case(seed: int) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(25):
        rel = rng.sample(docs, rng.randint(1, 12))
        qrels[f"q{q}"] = {d: float(rng.randint(1, 3)) for d in rel}
        run[f"q{q}"] = rng.sample(docs, 150)
    return qrels, run


@pytest.mark.parametrize("seed", range(3))
def test_recall_and_ndcg_match_pytrec_eval(seed: int) -> None:
    qrels, run = _random_case(seed)
    trec_run = {q: {d: float(1000 - i) for i, d in enumerate(r)} for q, r in run.items()}
    ev = pytrec_eval.RelevanceEvaluator(
        {q: {d: int(g) for d, g in r.items()} for q, r in qrels.items()}, {"recall.100", "ndcg_cut.4"}
    )
    ref = ev.evaluate(trec_run)
    rec = per_query(EvalSet("ct", qrels), run)
    ndcg = per_query(EvalSet("graded", qrels), run)
    for q in qrels:
        assert rec[q] == pytest.approx(ref[q]["recall_100"], abs=1e-9)
        assert ndcg[q] == pytest.approx(ref[q]["ndcg_cut_4"], abs=1e-9)


def test_summary_by_class_and_unexposed_share() -> None:
    ct = EvalSet(
        "ct",
        {"a": {"x": 1.0, "y": 1.0}, "b": {"z": 1.0}},
        {"a": "head", "b": "tail"},
        {"a": True, "b": False},
    )
    run = {"a": ["x", "q"], "b": ["w"]}
    out = summarise({"ct": ct}, run, exposed={"a": {"x"}, "b": set()})
    assert out["ct_recall@100"] == pytest.approx(0.25)
    assert out["ct_recall@100/head"] == 0.5 and out["ct_recall@100/tail"] == 0.0
    assert out["ct_recall@100/ambiguous"] == 0.5
    assert out["unexposed_share@100"] == pytest.approx((0.5 + 1.0) / 2)


def test_exact_search_orders_by_inner_product() -> None:
    import numpy as np

    d = np.eye(4, dtype=np.float32)
    q = np.array([[0.1, 0.9, 0.5, 0.0]], dtype=np.float32)
    assert exact_search(q, d, ["a", "b", "c", "d"], k=3) == [["b", "c", "a"]]
