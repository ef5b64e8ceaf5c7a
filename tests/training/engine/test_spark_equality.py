"""DuckDB and Spark run the same SQL on the same input and must give the same samples."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from training.engine.config import MineConfig
from training.engine.engines import SparkEngine, get_local_spark
from training.engine.llm_client import SimulatedSource
from training.engine.pipeline import mine

from .handmade import FakeLLM, build_logs, fake_theta

pytestmark = pytest.mark.spark


def _mine(logs: Path, out: Path, engine: object) -> list[dict[str, object]]:
    res = mine(
        logs,
        out,
        MineConfig(p3_n=5, p3_sampling="all"),
        engine=engine,
        scorer=fake_theta,  # type: ignore[arg-type]
        source=SimulatedSource(FakeLLM(), model="fake-llm"),
        progress=False,
    )
    return pq.read_table(res.samples).to_pylist()


def test_duckdb_and_spark_give_the_same_samples(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    build_logs(logs)
    duck = _mine(logs, tmp_path / "duck", "duckdb")
    spark = get_local_spark("local[1]", small=True)
    try:
        spk = _mine(logs, tmp_path / "spark", SparkEngine(spark=spark))
        # intermediate tables too (Spark writes folders of part files)
        for name in ("p1_candidates", "p2_candidates", "log_samples"):
            a = pq.read_table(tmp_path / "duck" / "work" / f"{name}.parquet").to_pylist()
            b = pq.read_table(tmp_path / "spark" / "work" / f"{name}.parquet").to_pylist()
            key = lambda r: tuple(str(v) for v in r.values())  # noqa: E731
            assert sorted(a, key=key) == sorted(b, key=key), name
    finally:
        spark.stop()
    assert len(duck) > 100
    assert duck == spk
