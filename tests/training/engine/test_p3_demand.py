"""P3 requests spread over queries by demand: volume, proportionality, cap, determinism."""

from __future__ import annotations

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
