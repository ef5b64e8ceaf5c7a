"""Plain (multi-positive) InfoNCE over a batch score matrix, the baseline loss of DPR/ANCE.

Each positive (label 1) of query q is contrasted with q's negatives (label 0: in-batch docs and
hard negatives); other positives of the same query are not negatives (for one positive per query
this is exactly the usual softmax cross-entropy). Label -1 removes the pair.
"""

from __future__ import annotations

import torch

from training.losses.reduction import check_reduction, reduce_per_query


def infonce_loss(
    scores: torch.Tensor, labels: torch.Tensor, temperature: float = 0.05, reduction: str = "mean"
) -> torch.Tensor:
    """InfoNCE with Q×D scores and Q×D labels in {1 positive, 0 negative, -1 ignored}."""
    if scores.dim() != 2 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must be the same Q×D shape, got {tuple(scores.shape)} "
            f"and {tuple(labels.shape)}"
        )
    check_reduction(reduction)
    logits = scores / temperature
    neg = labels == 0
    neg_big = torch.finfo(logits.dtype).min / 4
    masked = torch.where(neg, logits, torch.full_like(logits, neg_big))
    neg_lse = torch.logsumexp(masked, dim=1, keepdim=True)  # finite even when a row has no negative
    has_neg = neg.any(dim=1, keepdim=True)
    terms = torch.where(
        (labels > 0) & has_neg, torch.logaddexp(logits, neg_lse) - logits, torch.zeros_like(logits)
    )
    per_query = terms.sum(dim=1)
    return reduce_per_query(per_query, reduction)


def infonce_reference(scores: torch.Tensor, labels: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Slow loop version of ``infonce_loss`` (mean reduction), for tests."""
    total = scores.sum() * 0.0  # keeps the graph when no term exists
    q_n, d_n = scores.shape
    for q in range(q_n):
        negs = [scores[q, k] / temperature for k in range(d_n) if int(labels[q, k]) == 0]
        if not negs:
            continue
        for i in range(d_n):
            if int(labels[q, i]) != 1:
                continue
            si = scores[q, i] / temperature
            total = total + torch.logsumexp(torch.stack([si, *negs]), dim=0) - si
    return total / q_n
