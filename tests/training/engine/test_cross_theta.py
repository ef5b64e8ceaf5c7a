"""The cross-encoder θ on a tiny real BERT: it learns a pair relation, calibrates, and round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import CropsError
from training.engine.cross_theta import CrossEncoderTheta

pytestmark = pytest.mark.slow

TOPICS = {
    "cat": "kitten meow whiskers purr",
    "pasta": "recipe oven sauce dinner",
    "guitar": "chords melody concert strings",
    "grid": "substation voltage wiring coil",
}


def _pairs(n_queries: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    qs, ds, ys = [], [], []
    for i in range(n_queries):
        t = names[i % len(names)]
        q = f"{t} video {i}"
        for other in names:
            qs.append(q)
            ds.append(f"{' '.join(rng.permutation(TOPICS[other].split()))} clip")
            ys.append(int(other == t))
    return qs, ds, ys


def test_cross_theta_learns_calibrates_and_round_trips(tiny_bert: Path, tmp_path: Path) -> None:
    qs, ds, ys = _pairs(120, 0)
    theta = CrossEncoderTheta(tiny_bert, n_layers=2, max_length=24, steps=400, batch_size=32, lr=2e-3, threads=1)
    rep = theta.fit(qs, ds, ys, seed=0)
    assert rep.auc_test > 0.9 and 0.0 <= rep.ece_test <= 0.2
    p = theta.score(qs[:8], ds[:8])
    assert ((p > 0.5) == np.array(ys[:8], bool)).mean() >= 0.75
    theta.save(tmp_path / "theta")
    again = CrossEncoderTheta(tiny_bert, threads=1).load(tmp_path / "theta")
    assert np.allclose(again.score(qs[:8], ds[:8]), p, atol=1e-5)
    with pytest.raises(CropsError):
        CrossEncoderTheta(tiny_bert, n_layers=7)
