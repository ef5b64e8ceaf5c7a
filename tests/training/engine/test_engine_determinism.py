"""DuckDB and Spark give the same samples on simulated worlds with the real θ (MiniLM int8) and the
simulated LLM: every step downstream of the SQL reads its inputs in a canonical order, so a
parallel engine's row order cannot change θ's fit pairs, hence θ, hence which candidates pass α."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def _rows(path: Path) -> list[tuple[object, ...]]:
    t = pq.read_table(path)
    return sorted(tuple(str(v) for v in r.values()) for r in t.to_pylist())


@pytest.mark.parametrize("seed", [1, 2])
def test_duckdb_equals_spark_with_the_real_theta(seed: int, tmp_path: Path) -> None:
    from training.engine.config import MineConfig
    from training.engine.engines import SparkEngine, get_local_spark
    from training.engine.llm_client import SimulatedSource
    from training.engine.pipeline import mine
    from world.build import build_world
    from world.config import tiny_config
    from world.knowledge import SimulatedLLM

    world = tmp_path / "world"
    build_world(world, tiny_config(**{"n_requests": 1200, "catalog.n_videos": 500, "users.n_users": 150}),
                seed=seed, progress=False)
    cfg = MineConfig(p3_volume=0.3)

    def run(out: Path, engine: object) -> Path:
        source = SimulatedSource(SimulatedLLM(world, seed=0), model="sim")
        res = mine(world / "train", out, cfg, engine=engine, source=source, progress=False, threads=1,  # type: ignore[arg-type]
                   theta_backend="onnx-int8", max_fit_pairs=4000)
        return res.samples

    duck = run(tmp_path / "duck", "duckdb")
    spark = get_local_spark("local[2]", small=True)
    try:
        spk = run(tmp_path / "spark", SparkEngine(spark=spark))
    finally:
        spark.stop()
    for name in ("theta.parquet", "p3.parquet"):
        assert _rows(tmp_path / "duck" / "work" / name) == _rows(tmp_path / "spark" / "work" / name), name
    a, b = _rows(duck), _rows(spk)
    assert len(a) > 1000 and a == b
