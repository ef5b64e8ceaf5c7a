"""A/B statistics over users: ratio metrics, bootstrap CIs of relative deltas, delta-method p-values
and the sample size needed to detect a given relative change.

Users are the randomisation unit (the service hashes the user id into an arm), so every metric is a
ratio of per-user sums (clicks / exposures, …) and its uncertainty comes from resampling users, not
requests: a user's requests are correlated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

#: The report's metrics as (numerator, denominator) per-user sums.
METRICS: dict[str, tuple[str, str]] = {
    "ctr": ("clicks", "exposures"),
    "long_play_rate": ("long_plays", "exposures"),
    "reformulation_rate": ("reformulated", "requests"),
    "session_success": ("successes", "sessions"),
    "never_exposed_share": ("never_exposed", "exposures"),
    "recall_relevant": ("recall_sum", "recall_requests"),
}
PAPER_DELTAS = {"ctr": 0.00869, "long_play_rate": 0.00483, "reformulation_rate": -0.00646}


@dataclass
class ArmSums:
    """Per-user sums of one arm: ``sums[name]`` is an array over the arm's users."""

    users: np.ndarray
    sums: dict[str, np.ndarray]

    def ratio(self, metric: str) -> float:
        num, den = METRICS[metric]
        d = float(self.sums[den].sum())
        return float(self.sums[num].sum()) / d if d > 0 else float("nan")


def _rel_var(arm: ArmSums, metric: str) -> tuple[float, float]:
    """(ratio, variance of ratio/true − 1) by the delta method over users."""
    num, den = METRICS[metric]
    y, x = arm.sums[num].astype(np.float64), arm.sums[den].astype(np.float64)
    n = len(x)
    if n < 2 or x.sum() <= 0:
        return float("nan"), float("nan")
    r = y.sum() / x.sum()
    resid = y - r * x
    var_r = float(resid.var(ddof=1)) / (n * float(x.mean()) ** 2)
    return r, var_r / r**2 if r > 0 else float("nan")


def compare(
    control: ArmSums, treatment: ArmSums, metric: str, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float | None]:
    """Relative delta (t/c − 1) with a percentile bootstrap CI over users and a delta-method p-value."""
    num, den = METRICS[metric]
    rc, rt = control.ratio(metric), treatment.ratio(metric)
    out: dict[str, float | None] = {"control": rc, "treatment": rt, "delta_rel": None, "ci_low": None,
                                    "ci_high": None, "p_value": None, "delta_abs": None}
    if not (rc > 0 and math.isfinite(rt)):
        return out
    delta = rt / rc - 1.0
    out["delta_rel"] = delta
    out["delta_abs"] = rt - rc
    rng = np.random.default_rng(seed)
    boots = []
    for arm in (control, treatment):
        n = len(arm.users)
        y, x = arm.sums[num].astype(np.float64), arm.sums[den].astype(np.float64)
        # resample users: each row of w counts how often each user is drawn
        idx = rng.integers(0, n, size=(n_boot, n))
        ys = y[idx].sum(axis=1)
        xs = x[idx].sum(axis=1)
        boots.append(np.divide(ys, xs, out=np.full(n_boot, np.nan), where=xs > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = boots[1] / boots[0] - 1.0
    rel = rel[np.isfinite(rel)]
    if len(rel) >= 10:
        a = (1.0 - level) / 2.0
        out["ci_low"], out["ci_high"] = float(np.quantile(rel, a)), float(np.quantile(rel, 1.0 - a))
    _, vc = _rel_var(control, metric)
    _, vt = _rel_var(treatment, metric)
    if math.isfinite(vc) and math.isfinite(vt) and vc + vt > 0:
        se = (rt / rc) * math.sqrt(vc + vt)
        out["p_value"] = float(2.0 * norm.sf(abs(delta) / se))
    return out


def sessions_to_detect(
    arms: list[ArmSums], sessions_per_user: float, *, rel_change: float = 0.005, alpha: float = 0.05,
    power: float = 0.8, metric: str = "ctr"
) -> dict[str, float | None]:
    """Sessions per arm (two equal arms) for a two-sided test at ``alpha`` to detect ``rel_change``
    of ``metric`` with ``power``, from the per-user relative variance pooled over the arms."""
    v = [_rel_var(a, metric)[1] * len(a.users) for a in arms if len(a.users) >= 2]
    v = [x for x in v if math.isfinite(x)]
    if not v:
        return {"users_per_arm": None, "sessions_per_arm": None, "sessions_total": None}
    per_user_var = float(np.mean(v))
    n_users = float(norm.ppf(1 - alpha / 2) + norm.ppf(power)) ** 2 * 2 * per_user_var / rel_change**2
    return {
        "rel_change": rel_change,
        "alpha": alpha,
        "power": power,
        "users_per_arm": math.ceil(n_users),
        "sessions_per_arm": math.ceil(n_users * sessions_per_user),
        "sessions_total": math.ceil(2 * n_users * sessions_per_user),
    }
