"""CI end to end on a real (tiny) simulated world: world → mine → train (tiny budget) → eval.

Real components throughout: the world simulator, the data engine (DuckDB, θ discriminator,
simulated LLM), MiniLM with the adapter recipe, exact search, the world's eval sets.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_world_mine_train_eval(tmp_path: Path) -> None:
    from training.experiment.runner import run_experiment
    from world.build import build_world
    from world.config import tiny_config

    world = tmp_path / "world"
    build_world(world, tiny_config(), seed=0, progress=False)
    out = tmp_path / "exp"
    res = run_experiment(world, out, methods=["crops"], seeds=1, budget="tiny", progress=False)  # mines first
    assert (out / "samples" / "samples.parquet").is_file()
    run = res["runs"]["crops"][0]
    assert run["loss_last"] < run["loss_first"]  # training lowers the loss
    start, trained = res["pretrained"], res["methods"]["crops"]
    assert trained["ct_recall@100"]["mean"] > start["ct_recall@100"]  # and raises Recall@100
    assert (out / "table1.md").is_file() and (out / "table1.png").is_file()
