"""The reduction shared by the contrastive losses (per-query sums → batch loss)."""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


def reduce_per_query(per_query: torch.Tensor, reduction: str) -> torch.Tensor:
    """``none``: the per-query losses; ``sum``: their sum; ``mean``: their sum over the number of queries."""
    if reduction == "none":
        return per_query
    if reduction == "sum":
        return per_query.sum()
    return per_query.sum() / max(per_query.shape[0], 1)
