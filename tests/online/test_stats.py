"""A/B statistics: CIs cover the truth, p-values are calibrated under no effect, sample sizes match
the textbook formula in the case where one exists."""

from __future__ import annotations

import numpy as np

from online.stats import METRICS, ArmSums, compare, sessions_to_detect


def _arm(rng: np.random.Generator, n: int, ctr: float) -> ArmSums:
    exp = rng.integers(5, 30, n).astype(float)
    clicks = rng.binomial(exp.astype(int), ctr).astype(float)
    keys = {k for m in METRICS.values() for k in m}
    sums = {k: np.ones(n) for k in keys}
    sums["exposures"], sums["clicks"] = exp, clicks
    return ArmSums(np.arange(n), sums)


def test_ci_covers_a_true_delta_and_p_is_small() -> None:
    rng = np.random.default_rng(0)
    c, t = _arm(rng, 4000, 0.10), _arm(rng, 4000, 0.11)
    out = compare(c, t, "ctr", n_boot=1000)
    assert out["ci_low"] is not None and out["ci_low"] < 0.10 < out["ci_high"]
    assert out["p_value"] is not None and out["p_value"] < 1e-3


def test_p_values_under_no_effect_are_not_small_too_often() -> None:
    rng = np.random.default_rng(1)
    ps = [compare(_arm(rng, 300, 0.1), _arm(rng, 300, 0.1), "ctr", n_boot=200)["p_value"] for _ in range(200)]
    share = np.mean([p < 0.05 for p in ps])
    assert 0.01 <= share <= 0.10, share


def test_sample_size_matches_the_bernoulli_formula() -> None:
    rng = np.random.default_rng(2)
    p = 0.1
    arms = []
    for _ in range(2):
        n = 200_000
        keys = {k for m in METRICS.values() for k in m}
        sums = {k: np.ones(n) for k in keys}
        sums["clicks"] = (rng.random(n) < p).astype(float)
        arms.append(ArmSums(np.arange(n), sums))
    got = sessions_to_detect(arms, 1.0, rel_change=0.005)["users_per_arm"]
    want = (1.959964 + 0.841621) ** 2 * 2 * (1 - p) / p / 0.005**2
    assert abs(got - want) / want < 0.03, (got, want)
