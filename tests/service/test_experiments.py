"""A/B assignment: deterministic, uniform, weight-respecting, layered; config validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from core.errors import CropsError
from service.experiments import BUCKETS, Assigner, bucket, parse_config

N = 100_000


def cfg_text(w_control: float = 50, w_treat: float = 50, version: int = 1) -> str:
    return f"""
version: {version}
bundles: {{a: /bundles/a, b: /bundles/b}}
defaults: {{bundle: a}}
layers:
  - name: model
    experiments:
      - name: ab
        buckets: [0, 10000]
        arms:
          control: {{weight: {w_control}}}
          treatment: {{weight: {w_treat}, bundle: b}}
  - name: search
    experiments:
      - name: np
        buckets: [0, 5000]
        arms:
          np_low: {{weight: 1, nprobe: 8}}
          np_high: {{weight: 1, nprobe: 64}}
"""


def test_bucketing_is_deterministic_across_processes() -> None:
    units = [f"user-{i}" for i in range(200)]
    here = [bucket(u, "salt") for u in units]
    assert here == [bucket(u, "salt") for u in units]
    code = "from service.experiments import bucket; print([bucket(f'user-{i}', 'salt') for i in range(200)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == here
    assert here != [bucket(u, "other-salt") for u in units]  # the salt matters


def test_bucketing_is_uniform_chi_square() -> None:
    counts = np.bincount([bucket(f"u{i}", "layer-salt") for i in range(N)], minlength=BUCKETS)
    _, p = stats.chisquare(counts)
    assert p > 1e-3, p
    # Sequential ids must not cluster: split 10 coarse groups, also uniform.
    coarse = counts.reshape(10, -1).sum(axis=1)
    assert stats.chisquare(coarse).pvalue > 1e-3


@pytest.mark.parametrize(("wc", "wt"), [(50, 50), (90, 10), (1, 3)])
def test_weights_are_respected(wc: float, wt: float) -> None:
    a = Assigner(parse_config(cfg_text(wc, wt)))
    arms = [a.assign(f"u{i}").arm.split("+")[0] for i in range(N)]
    share = arms.count("treatment") / N
    expected = wt / (wc + wt)
    sigma = (expected * (1 - expected) / N) ** 0.5
    assert abs(share - expected) < 5 * sigma, (share, expected)


def test_layers_are_independent_and_disjoint() -> None:
    a = Assigner(parse_config(cfg_text()))
    first, second = [], []
    for i in range(20_000):
        asg = a.assign(f"u{i}")
        layers = [p[0] for p in asg.experiments]
        assert len(layers) == len(set(layers))  # at most one experiment per layer
        first.append(asg.experiments[0][2])
        second.append(asg.experiments[1][2] if len(asg.experiments) > 1 else "none")
        assert asg.bundle == ("b" if first[-1] == "treatment" else "a")
    share_in_search = sum(s != "none" for s in second) / len(second)
    assert abs(share_in_search - 0.5) < 0.03  # the search experiment owns half the buckets
    table = np.zeros((2, 3))
    for f, s in zip(first, second, strict=True):
        table[["control", "treatment"].index(f), ["none", "np_low", "np_high"].index(s)] += 1
    assert stats.chi2_contingency(table).pvalue > 1e-3  # layer 2 does not depend on layer 1


def test_assignment_is_sticky_and_force_overrides_one_layer() -> None:
    a = Assigner(parse_config(cfg_text()))
    assert all(a.assign("alice") == a.assign("alice") for _ in range(5))
    forced = a.assign("alice", force_arm="treatment")
    assert forced.bundle == "b" and forced.arm.startswith("treatment")
    # the search layer is still hashed normally
    assert forced.experiments[1:] == a.assign("alice").experiments[1:]
    with pytest.raises(CropsError, match="unknown arm"):
        a.assign("alice", force_arm="nope")


def test_moving_weights_keeps_most_users_in_their_arm() -> None:
    before = Assigner(parse_config(cfg_text(50, 50)))
    after = Assigner(parse_config(cfg_text(60, 40)))
    moved = sum(before.assign(f"u{i}").bundle != after.assign(f"u{i}").bundle for i in range(10_000))
    assert 0.05 < moved / 10_000 < 0.15  # only the 10% of buckets that changed hands


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("version: 1\nbundles: {a: x}\ndefaults: {bundle: zz}\n", "not in bundles"),
        ("version: 1\nbundles: {}\ndefaults: {bundle: a}\n", "bundles"),
        ("version: -1\nbundles: {a: x}\ndefaults: {bundle: a}\n", "version"),
        ("- just a list", "mapping"),
        ("version: [1\n", "not YAML"),
        (cfg_text().replace("buckets: [0, 5000]", "buckets: [0, 20000]"), "buckets"),
        (cfg_text().replace("weight: 50}", "weight: 0}").replace("weight: 50,", "weight: 0,"), "sum to 0"),
        (cfg_text().replace("np_low", "control"), "unique"),
        (cfg_text().replace("bundle: b}", "bundle: nope}"), "not in bundles"),
        (cfg_text() + "        extra_key: 1\n", "extra"),
    ],
)
def test_invalid_configs_are_rejected_with_a_reason(text: str, needle: str) -> None:
    with pytest.raises(CropsError) as info:
        parse_config(text)
    assert info.value.kind.value == "config_invalid"
    assert needle in info.value.message, info.value.message


def test_overlapping_experiments_in_a_layer_are_rejected() -> None:
    text = cfg_text().replace(
        "          np_high: {weight: 1, nprobe: 64}\n",
        "          np_high: {weight: 1, nprobe: 64}\n"
        "      - name: other\n        buckets: [4000, 6000]\n        arms: {x: {weight: 1}}\n",
    )
    with pytest.raises(CropsError, match="overlapping"):
        parse_config(text)
