"""Ranking metrics (numpy only). Checked against a kept library (pytrec_eval/ranx) in tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def ndcg_at_k(ranked: Sequence[str], gains: Mapping[str, float], k: int) -> float:
    """nDCG@k with linear gains (trec_eval's convention); 0 when the query has no positive gain."""
    dcg = sum(gains.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in gains.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Share of the relevant (gain > 0) docs found in the top k; 0 when there are none."""
    rel = {d for d, g in relevant.items() if g > 0}
    if not rel:
        return 0.0
    return len(rel.intersection(ranked[:k])) / len(rel)


def mean_metrics(
    run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]], ks: Sequence[int] = (10, 100)
) -> dict[str, float]:
    """Mean nDCG@k and Recall@k over the queries that have qrels (missing runs count as empty)."""
    out: dict[str, float] = {}
    qids = [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]
    if not qids:
        return out
    for k in ks:
        out[f"ndcg@{k}"] = sum(ndcg_at_k(run.get(q, []), qrels[q], k) for q in qids) / len(qids)
        out[f"recall@{k}"] = sum(recall_at_k(run.get(q, []), qrels[q], k) for q in qids) / len(qids)
    out["queries"] = float(len(qids))
    return out
