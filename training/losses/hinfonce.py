"""H-InfoNCE (CroPS; docs/explanation/architecture.md, "The loss"), computed in one pass over the batch.

For query q with sample set S (its labelled docs, plus every other doc of the batch at level 0)::

    L(q) = - Σ_{i ∈ S, l_i > 0} log exp(s_i/τ) / (exp(s_i/τ) + Σ_{k ∈ S, l_k < l_i} exp(s_k/τ))

A doc is a negative only of strictly higher levels. Instead of a loop over positives (O(Q·D²)) we
bucket each row's exp-scores by level with one ``scatter_add`` (O(Q·D)), take a cumulative
log-sum-exp over the ≤ 7 level buckets (O(Q·levels)), and gather each positive's denominator:
O(Q·D + Q·levels) work and memory, the same order as InfoNCE.
"""

from __future__ import annotations

import torch

from training.losses.reduction import check_reduction, reduce_per_query

IGNORE = -1
"""Level of a (query, doc) pair that is not part of the query's sample set (neither side)."""


def _check(scores: torch.Tensor, levels: torch.Tensor) -> None:
    if scores.dim() != 2 or scores.shape != levels.shape:
        raise ValueError(
            f"scores and levels must be the same Q×D shape, got {tuple(scores.shape)} "
            f"and {tuple(levels.shape)}"
        )
    if levels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"levels must be an integer tensor, got {levels.dtype}")


def level_lse(logits: torch.Tensor, idx: torch.Tensor, n_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log-sum-exp of ``logits`` within each bucket ``idx`` (Q×B), and the bucket counts.

    Stabilised by each bucket's own (detached) maximum, so no bucket underflows whatever the spread
    of scores. Empty buckets get a large negative finite value (never -inf: its gradient is NaN).
    """
    q = logits.shape[0]
    neg_big = torch.finfo(logits.dtype).min / 4
    with torch.no_grad():
        bmax = torch.full((q, n_buckets), neg_big, dtype=logits.dtype, device=logits.device)
        bmax = bmax.scatter_reduce(1, idx, logits.detach(), reduce="amax", include_self=True)
        counts = torch.zeros((q, n_buckets), dtype=logits.dtype, device=logits.device)
        counts = counts.scatter_add(1, idx, torch.ones_like(logits))
    shifted = torch.exp(logits - bmax.gather(1, idx))
    sums = torch.zeros((q, n_buckets), dtype=logits.dtype, device=logits.device).scatter_add(1, idx, shifted)
    present = counts > 0
    lse = torch.where(
        present,
        bmax + torch.log(torch.where(present, sums, torch.ones_like(sums))),
        torch.full_like(sums, neg_big),
    )
    return lse, counts


def hinfonce_loss(
    scores: torch.Tensor,
    levels: torch.Tensor,
    temperature: float = 0.05,
    reduction: str = "mean",
    max_level: int | None = None,
    min_level: int = 1,
) -> torch.Tensor:
    """H-InfoNCE over a Q×D score matrix and a Q×D integer level matrix.

    ``levels[q, d]`` is the HLA level (0..max_level) of doc d for query q: the doc's own label for q
    when it has one (even if another query brought it into the batch), else 0 (in-batch negative);
    ``IGNORE`` (-1) removes the pair from q's sample set. ``reduction``: "mean" (sum of the positive
    terms divided by the number of queries), "sum", or "none" (per-query sums, shape Q).
    ``min_level`` > 1 keeps only the terms of docs at that level or above (an ablation: lower
    levels then act only as negatives, never as positives of the levels below them).
    """
    _check(scores, levels)
    if min_level < 1:
        raise ValueError(f"min_level must be >= 1, got {min_level}")
    check_reduction(reduction)
    levels = levels.long()
    top = int(levels.max().item()) if max_level is None and levels.numel() else int(max_level or 0)
    top = max(top, 1)
    logits = scores / temperature
    # bucket 0 = ignored pairs, bucket l+1 = level l; ignored pairs never enter a denominator
    idx = levels.clamp(min=IGNORE, max=top) + 1
    lse, counts = level_lse(logits, idx, top + 2)
    neg_big = torch.finfo(logits.dtype).min / 4
    # below[:, j] = log-sum-exp of all levels < j (bucket 1..j), j = 1..top; column 0 unused
    below = torch.logcumsumexp(lse[:, 1:], dim=1)  # below[:, j-1] covers levels 0..j-1
    n_below = torch.cumsum(counts[:, 1:], dim=1)
    is_pos = levels >= min_level
    pos_col = levels.clamp(min=1, max=top) - 1
    den_neg = below.gather(1, pos_col)
    has_neg = n_below.gather(1, pos_col) > 0
    # -log(e^s / (e^s + N)) = logaddexp(s, log N) - s; a positive with no lower-level doc adds 0
    den_neg = torch.where(has_neg, den_neg, torch.full_like(den_neg, neg_big))
    terms = torch.where(is_pos & has_neg, torch.logaddexp(logits, den_neg) - logits, torch.zeros_like(logits))
    per_query = terms.sum(dim=1)
    return reduce_per_query(per_query, reduction)


def hinfonce_reference(
    scores: torch.Tensor, levels: torch.Tensor, temperature: float = 0.05, min_level: int = 1
) -> torch.Tensor:
    """Slow, obviously-correct loop version of ``hinfonce_loss`` (mean reduction), for tests."""
    total = scores.sum() * 0.0  # keeps the graph when no term exists
    q_n, d_n = scores.shape
    for q in range(q_n):
        for i in range(d_n):
            li = int(levels[q, i])
            if li < min_level:
                continue
            negs = [scores[q, k] / temperature for k in range(d_n) if 0 <= int(levels[q, k]) < li]
            if not negs:
                continue
            si = scores[q, i] / temperature
            den = torch.logsumexp(torch.stack([si, *negs]), dim=0)
            total = total + (den - si)
    return total / q_n
