"""Evaluation slices on hand-made inputs: clean/typo and frequency weighting, CT seen/unseen, sense
coverage, an extra graded set, and the 95% CI over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.experiment.evaluate import EvalSet, SliceInfo, load_eval_sets, summarise
from world.evaluation import lexicon, sense_coverage, sliced_means, world_ontology

INFO = {
    "python": {"class": "head", "ambiguous": True, "typo": False, "n_test": 30.0, "topics": [1, 2]},
    "pyhton": {"class": "head", "ambiguous": True, "typo": True, "n_test": 1.0, "topics": [1, 2]},
    "pasta": {"class": "torso", "ambiguous": False, "typo": False, "n_test": 9.0, "topics": [3]},
}


def test_sliced_means_split_typo_and_weight_by_frequency() -> None:
    out = sliced_means("m", {"python": 1.0, "pyhton": 0.0, "pasta": 0.5}, INFO)
    assert out["m/clean"] == pytest.approx(0.75) and out["m/typo"] == 0.0
    assert out["m/freq"] == pytest.approx((30 * 1.0 + 0 + 9 * 0.5) / 40)
    assert out["m/ambiguous/clean"] == 1.0 and out["m/ambiguous/typo"] == 0.0


def test_sense_coverage_counts_senses_in_the_top_k() -> None:
    topic_of = {"a": 1, "b": 1, "c": 2}
    assert sense_coverage(["a", "b", "c"], [1, 2], topic_of, 2) == 0.5
    assert sense_coverage(["a", "b", "c"], [1, 2], topic_of, 3) == 1.0
    assert sense_coverage(["x"], [], topic_of, 3) != sense_coverage(["x"], [], topic_of, 3)  # nan


def test_typo_words_fall_outside_the_platform_vocabulary(tmp_path: Path) -> None:
    lex = lexicon(world_ontology(tmp_path))  # no world.json: the embedded ontology
    assert {"python", "tutorial"} <= lex and "pyhton" not in lex


def test_summarise_ct_seen_unseen_and_sense_coverage() -> None:
    ct = EvalSet("ct")
    ct.qrels = {"python": {"a": 1.0, "c": 1.0}, "pasta": {"p": 1.0}}
    ct.query_class = {"python": "head", "pasta": "torso"}
    ct.ambiguous = {"python": True, "pasta": False}
    info = SliceInfo(INFO, clicked={"python": {"a"}}, topic_of={"a": 1, "c": 2, "p": 3})
    out = summarise({"ct": ct}, {"python": ["a", "x"], "pasta": ["p"]}, None, info)
    assert out["ct_recall@100"] == pytest.approx(0.75)
    assert out["ct_recall@100/seen"] == 1.0 and out["ct_recall@100/unseen"] == pytest.approx(0.5)
    assert out["sense_coverage@10"] == 0.5 and out["sense_coverage@100/clean"] == 0.5


def test_extra_graded_file_is_scored(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    row = {"query": "q", "video_id": "v", "query_class": "head", "ambiguous": False}
    for name in ("ct", "qr"):
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / "eval" / f"{name}.parquet")
    for name in ("graded", "graded_sense"):
        pq.write_table(pa.Table.from_pylist([{**row, "grade": 3}]), tmp_path / "eval" / f"{name}.parquet")
    sets = load_eval_sets(tmp_path)
    assert sets["graded_sense"].metric == "graded_sense_ndcg@4"
    out = summarise(sets, {"q": ["v"]})
    assert out["graded_sense_ndcg@4"] == 1.0 and out["ndcg@4"] == 1.0


def test_ci95_over_seeds() -> None:
    from training.experiment.report import ci95, table

    assert ci95([0.5]) != ci95([0.5])  # one seed: no interval
    assert ci95([0.4, 0.5, 0.6]) == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)
    tab = table({"m": [{"metrics": {"x": 0.4}}, {"metrics": {"x": 0.6}}]})
    assert tab["m"]["x"]["mean"] == 0.5 and tab["m"]["x"]["n"] == 2


def test_sense_aware_set_is_judged_per_request(tmp_path: Path) -> None:
    """Two users type "python", one wants the language, one the snake: each request is graded by its
    own need, so one ranking cannot get both top marks (the max over senses would hide that)."""
    (tmp_path / "eval").mkdir()
    row = {"query": "python", "query_class": "head", "ambiguous": True}
    for name in ("ct", "qr"):
        pq.write_table(pa.Table.from_pylist([{**row, "video_id": "lang", "pair_seen_in_training": True}]),
                       tmp_path / "eval" / f"{name}.parquet")
    pq.write_table(pa.Table.from_pylist([{**row, "video_id": v, "grade": 3} for v in ("lang", "snake")]),
                   tmp_path / "eval" / "graded.parquet")
    sense = [{**row, "request_id": "r1", "video_id": "lang", "grade": 3},
             {**row, "request_id": "r1", "video_id": "snake", "grade": 0},
             {**row, "request_id": "r2", "video_id": "lang", "grade": 0},
             {**row, "request_id": "r2", "video_id": "snake", "grade": 3}]
    pq.write_table(pa.Table.from_pylist(sense), tmp_path / "eval" / "graded_sense.parquet")
    sets = load_eval_sets(tmp_path)
    assert sets["graded_sense"].query("request:r1") == "python"
    assert sets["ct"].seen == {("python", "lang"): True}
    out = summarise(sets, {"python": ["lang", "x", "y", "z"]})
    assert out["ndcg@4"] == pytest.approx(3 / (3 + 3 / np.log2(3)))  # max over senses: half the ideal list
    assert out["graded_sense_ndcg@4"] == pytest.approx(0.5)  # r1 perfect, r2 nothing in the top 4
