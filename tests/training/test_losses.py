"""H-InfoNCE and InfoNCE against slow loop references (values and gradients, float64)."""

from __future__ import annotations

import pytest
import torch

from training.losses import IGNORE, hinfonce_loss, infonce_loss
from training.losses.hinfonce import hinfonce_reference
from training.losses.infonce import infonce_reference


def _grad_pair(fast, slow, scores, labels, tau):  # type: ignore[no-untyped-def]
    a = scores.clone().requires_grad_(True)
    b = scores.clone().requires_grad_(True)
    la = fast(a, labels, temperature=tau)
    lb = slow(b, labels, temperature=tau)
    la.backward()
    lb.backward()
    return la, lb, a.grad, b.grad


@pytest.mark.parametrize("seed", range(12))
def test_hinfonce_matches_reference_random(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, d = 1 + seed % 5, 3 + (seed * 7) % 11
    scores = torch.randn(q, d, generator=g, dtype=torch.float64)
    levels = torch.randint(-1, 6, (q, d), generator=g)
    if seed % 3 == 0:  # ties in scores and levels
        scores = torch.round(scores * 2) / 2
    tau = [0.05, 0.1, 1.0][seed % 3]
    la, lb, ga, gb = _grad_pair(hinfonce_loss, hinfonce_reference, scores, levels, tau)
    assert torch.allclose(la, lb, atol=1e-5, rtol=0), (la, lb)
    assert torch.allclose(ga, gb, atol=1e-5, rtol=0)
    assert torch.isfinite(ga).all()


@pytest.mark.parametrize("min_level", [2, 4, 5])
def test_hinfonce_min_level_matches_reference(min_level: int) -> None:
    g = torch.Generator().manual_seed(min_level)
    scores = torch.randn(4, 9, generator=g, dtype=torch.float64)
    levels = torch.randint(-1, 6, (4, 9), generator=g)
    a = scores.clone().requires_grad_(True)
    b = scores.clone().requires_grad_(True)
    la = hinfonce_loss(a, levels, temperature=0.1, min_level=min_level)
    lb = hinfonce_reference(b, levels, temperature=0.1, min_level=min_level)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(a.grad, b.grad, atol=1e-5)  # type: ignore[arg-type]
    # fewer terms than the full loss; docs below min_level still sit in the denominators
    assert la < hinfonce_loss(scores, levels, temperature=0.1)
    with pytest.raises(ValueError, match="min_level"):
        hinfonce_loss(scores, levels, min_level=0)


def test_hinfonce_edge_cases() -> None:
    # row 0: only level 0 (no positive) → 0; row 1: one level only (all 4s, nothing below) → 0;
    # row 2: doc 0 is a positive (5) here but an in-batch negative (0) for row 3; ties in scores.
    scores = torch.tensor(
        [[0.3, 0.3, -0.2, 0.1], [0.9, 0.1, 0.1, 0.5], [0.2, 0.2, 0.7, -0.4], [0.6, 0.6, 0.1, 0.0]],
        dtype=torch.float64,
    )
    levels = torch.tensor([[0, 0, 0, 0], [4, 4, 4, 4], [5, 4, 3, 0], [0, 4, IGNORE, 1]])
    la, lb, ga, gb = _grad_pair(hinfonce_loss, hinfonce_reference, scores, levels, 0.05)
    assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(ga, gb, atol=1e-5)
    per_q = hinfonce_loss(scores, levels, reduction="none")
    assert per_q[0] == 0 and per_q[1] == 0 and per_q[2] > 0 and per_q[3] > 0
    assert ga[1].abs().max() == 0  # a query with one level only gets no gradient
    assert ga[3, 2] == 0  # an ignored pair gets none either


def test_hinfonce_extreme_scores_stay_finite() -> None:
    scores = torch.tensor([[200.0, -300.0, 50.0], [1e3, 1e3, -1e3]], dtype=torch.float64, requires_grad=True)
    levels = torch.tensor([[4, 0, 2], [1, 0, 0]])
    loss = hinfonce_loss(scores, levels, temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()  # type: ignore[arg-type]


def test_two_levels_equal_infonce() -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 2, (6, 9), generator=g)
    assert torch.allclose(hinfonce_loss(scores, labels), infonce_loss(scores, labels), atol=1e-10)


@pytest.mark.parametrize("seed", range(8))
def test_infonce_matches_reference_random(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    q, d = 1 + seed % 4, 2 + seed * 2
    scores = torch.randn(q, d, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 2, (q, d), generator=g)
    la, lb, ga, gb = _grad_pair(infonce_loss, infonce_reference, scores, labels, 0.07)
    assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(ga, gb, atol=1e-5)


def test_infonce_single_positive_is_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 5, generator=g, dtype=torch.float64)
    labels = torch.eye(5, dtype=torch.long)
    ce = torch.nn.functional.cross_entropy(scores / 0.05, torch.arange(5))
    assert torch.allclose(infonce_loss(scores, labels), ce, atol=1e-10)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="same"):
        hinfonce_loss(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        hinfonce_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same"):
        infonce_loss(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long))
