import math

import numpy as np
import pytest

from core.errors import CropsError
from core.ir_metrics import mean_metrics, ndcg_at_k, recall_at_k
from core.tokenizer import default_model_dir, encode_batch, load_tokenizer


def test_single_query_is_not_padded_to_128() -> None:
    tok = load_tokenizer(default_model_dir(), 64)
    ids, mask = encode_batch(tok, ["cat video"])
    assert ids.shape == (1, 4)  # [CLS] cat video [SEP]
    assert mask.sum() == 4


def test_batch_pads_to_longest_and_truncates() -> None:
    tok = load_tokenizer(default_model_dir(), 16)
    ids, mask = encode_batch(tok, ["cat", "a much longer query about power transformers " * 5])
    assert ids.shape == (2, 16)
    assert mask[0].sum() == 3 and mask[1].sum() == 16
    assert ids.dtype == np.int64


def test_missing_tokenizer_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CropsError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json", 8)


def test_metrics_against_pytrec_eval() -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(0, 4)) for j in rng.choice(50, 8, replace=False)}
             for i in range(30)}
    run = {q: [f"d{j}" for j in rng.permutation(50)[:20]] for q in qrels}
    trec_run = {q: {d: float(len(docs) - r) for r, d in enumerate(docs)} for q, docs in run.items()}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10"})
    ref = ev.evaluate(trec_run)
    for q in qrels:
        if not any(g > 0 for g in qrels[q].values()):
            continue
        assert math.isclose(ndcg_at_k(run[q], qrels[q], 10), ref[q]["ndcg_cut_10"], abs_tol=1e-6)
        assert math.isclose(recall_at_k(run[q], qrels[q], 10), ref[q]["recall_10"], abs_tol=1e-6)


def test_mean_metrics_counts_missing_runs_as_zero() -> None:
    qrels = {"a": {"x": 1.0}, "b": {"y": 1.0}}
    m = mean_metrics({"a": ["x"]}, qrels, ks=(10,))
    assert m["recall@10"] == 0.5 and m["queries"] == 2
