"""The Table-1 runner end to end on a hand-made world (tiny budget, tiny BERT), and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.baselines.bm25 import BM25Index
from training.baselines.methods import METHODS


def test_bm25_finds_the_matching_doc() -> None:
    bm = BM25Index(["a", "b", "c"], ["cat playing piano", "pasta recipe", "power substation tour"])
    assert bm.search(["substation"], k=3) == [["c"]]


def test_experiment_tiny_end_to_end(tiny_world: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from training.experiment.runner import run_experiment

    out = tmp_path / "exp"
    res = run_experiment(
        tiny_world,
        out,
        seeds=2,
        budget="tiny",
        samples=tiny_world / "samples.parquet",
        model_dir=tiny_bert,
        progress=False,
        steps=40,
    )
    assert set(res["methods"]) == set(METHODS) and res["seeds"] == [0, 1] and res["budget"] == "tiny"
    for cells in res["methods"].values():
        for key in ("ct_recall@100", "qr_recall@100", "ndcg@4"):
            assert 0.0 <= cells[key]["mean"] <= 1.0 and cells[key]["std"] >= 0.0
        assert "ct_recall@100/ambiguous" in cells and "unexposed_share@100" in cells
    start = res["pretrained"]["ct_recall@100"]
    for m in ("crops", "fs-lr", "dpr"):
        assert res["methods"][m]["ct_recall@100"]["mean"] > start, m  # training beats the starting model
        for r in res["runs"][m]:
            assert r["loss_last"] < r["loss_first"]
    assert res["runs"]["ance"][0]["train_queries"] == res["runs"]["dpr"][0]["train_queries"]
    assert (out / "table1.md").read_text().count("| crops") >= 5
    assert (out / "table1.png").stat().st_size > 1000
    assert json.loads((out / "table1.json").read_text())["methods"]["crops"]["ndcg@4"]["mean"] >= 0
    # resumable per (method, seed): a rerun trains nothing
    done = out / "runs" / "crops" / "seed1" / "metrics.json"
    stamp = done.stat().st_mtime_ns
    run_experiment(
        tiny_world,
        out,
        methods=["crops"],
        seeds=2,
        budget="tiny",
        samples=tiny_world / "samples.parquet",
        model_dir=tiny_bert,
        progress=False,
        steps=40,
    )
    assert done.stat().st_mtime_ns == stamp


def test_cli_errors_are_one_line(tiny_world: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    def crops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crops", *args], capture_output=True, text=True, timeout=120
        )

    r = crops(
        "experiment",
        "--world",
        str(tiny_world),
        "--out",
        str(tmp_path / "o"),
        "--methods",
        "nope",
        "--samples",
        str(tiny_world / "samples.parquet"),
    )
    assert r.returncode == 2 and "unknown method" in r.stderr and "Traceback" not in r.stderr
    r = crops("experiment", "--world", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a folder" in r.stderr
    r = crops(
        "train",
        "--samples",
        str(tiny_world / "samples.parquet"),
        "--videos",
        str(tiny_world / "videos.parquet"),
        "--out",
        str(tmp_path / "t"),
        "--method",
        "ance",
    )
    assert r.returncode == 2 and "--method must be" in r.stderr


@pytest.mark.parametrize("budget", ["bogus"])
def test_unknown_budget(budget: str) -> None:
    from core.errors import CropsError
    from training.experiment.budgets import config_for

    with pytest.raises(CropsError, match="--budget"):
        config_for(budget)
