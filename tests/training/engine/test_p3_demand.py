"""P3 requests spread over queries by demand: volume, proportionality, cap, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import CropsError
from training.engine.config import MineConfig
from training.engine.p3 import allocate_by_demand


def test_allocation_follows_demand_and_respects_the_cap() -> None:
    demand = [1000.0, 100.0, 10.0, 1.0]
    counts = allocate_by_demand(demand, 2000, cap=10_000, seed=0)
    assert counts.sum() == 2000 and list(counts) == sorted(counts, reverse=True)
    assert counts[0] / counts.sum() == pytest.approx(1000 / 1111, abs=0.03)
    capped = allocate_by_demand(demand, 2000, cap=30, seed=0)
    assert capped.max() == 30
    assert np.array_equal(allocate_by_demand(demand, 500, 50, seed=1), allocate_by_demand(demand, 500, 50, seed=1))
    assert allocate_by_demand([], 10, 5, 0).size == 0 and allocate_by_demand([1.0], 0, 5, 0).tolist() == [0]


def test_p3_settings_are_checked() -> None:
    with pytest.raises(CropsError):
        MineConfig(p3_sampling="hash").validate()
    with pytest.raises(CropsError):
        MineConfig(p3_volume=-1).validate()


def test_theta_never_fits_on_test_strings(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.engine.tables import test_query_strings

    (tmp_path / "eval").mkdir()
    (tmp_path / "train").mkdir()
    table = pa.table({"query": ["Python Tutorial", "cats"], "video_id": ["a", "b"]})
    pq.write_table(table, tmp_path / "eval" / "ct.parquet")
    assert test_query_strings(tmp_path / "train") == {"python tutorial", "cats"}
    assert test_query_strings(tmp_path / "elsewhere" / "logs") == set()


def test_alpha_sweep_reports_kept_grades() -> None:
    from training.engine.report import alpha_sweep

    theta = np.array([0.9, 0.8, 0.7, 0.2])
    grade = np.array([3, 1, 0, 2])
    rows = alpha_sweep(theta, grade >= 2, np.ones(4, bool), (0.5, 0.85), grade=grade)
    assert rows[0]["kept"] == 3 and rows[0]["by_grade"] == pytest.approx({"0": 1 / 3, "1": 1 / 3, "2": 0.0, "3": 1 / 3})
    assert rows[1]["by_grade"]["3"] == 1.0 and rows[0]["precision"] == pytest.approx(1 / 3)
