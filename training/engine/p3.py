"""P3 (world knowledge): ask a description source for videos matching each query, then filter.

The quality filter keeps a description only if it is of sensible length, is not a copy of the
example video, is not a duplicate within the query, and θ(query, description) ≥ α. Every rejected
description keeps its reason, so the report can say where P3 output goes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.normalize import normalize_text
from training.engine.llm_client import DescriptionSource, GenerationRequest, GenerationResult

_WORD = re.compile(r"\w+")


def _tokens(text: str) -> set[str]:
    return set(_WORD.findall(normalize_text(text)))


def is_copy(text: str, example: str, max_jaccard: float = 0.8) -> bool:
    """Same normalised text as the example, or ≥ ``max_jaccard`` word overlap with it."""
    a, b = _tokens(text), _tokens(example)
    if normalize_text(text) == normalize_text(example):
        return True
    if not a or not b:
        return False
    return len(a & b) / len(a | b) >= max_jaccard


@dataclass
class P3Row:
    query: str
    text: str
    example_video_id: str
    theta: float | None
    keep: bool
    reason: str  # "ok" or why the description was dropped
    truth_ok: bool | None = None  # simulated sources: fits the senses the LLM read in the query
    about: tuple[int, int, str | None] | None = None  # simulated: (topic, intent, modifier) described


def prefilter(
    query: str,
    example_video_id: str,
    example_text: str,
    texts: Sequence[str],
    *,
    min_chars: int,
    max_chars: int,
    truth_ok: Sequence[bool] | None = None,
    about: Sequence[tuple[int, int, str | None]] | None = None,
) -> list[P3Row]:
    """Length, copy-of-example and duplicate checks (θ is applied afterwards, in one batch)."""
    out: list[P3Row] = []
    seen: set[str] = set()
    for i, raw in enumerate(texts):
        text = " ".join(str(raw).split())
        norm = normalize_text(text)
        if len(text) < min_chars:
            reason = "too short"
        elif len(text) > max_chars:
            reason = "too long"
        elif is_copy(text, example_text):
            reason = "copy of example"
        elif norm in seen:
            reason = "duplicate"
        else:
            reason = "ok"
        seen.add(norm)
        ok = None if truth_ok is None or i >= len(truth_ok) else bool(truth_ok[i])
        ab = None if about is None or i >= len(about) else about[i]
        out.append(P3Row(query, text, example_video_id, None, reason == "ok", reason, ok, ab))
    return out


def allocate_by_demand(demand: Sequence[float], total: int, cap: int, seed: int) -> np.ndarray:
    """Descriptions per query: ``total`` draws over the queries in proportion to ``demand`` (a
    seeded multinomial), at most ``cap`` per query. Head queries, the ones with most requests and
    most senses to cover, get most; the long tail gets some at random."""
    d = np.asarray(demand, dtype=np.float64)
    if len(d) == 0 or total <= 0 or d.sum() <= 0:
        return np.zeros(len(d), dtype=np.int64)
    counts = np.random.default_rng([seed, 3]).multinomial(total, d / d.sum())
    return np.minimum(counts, cap).astype(np.int64)


def generate_p3(
    source: DescriptionSource,
    examples: Sequence[tuple[str, str, str]],
    score: Callable[[list[str], list[str]], np.ndarray],
    *,
    n: int | Sequence[int],
    alpha: float,
    min_chars: int,
    max_chars: int,
    progress: bool = False,
) -> tuple[list[P3Row], list[GenerationResult]]:
    """``examples``: (query, example_video_id, example_text); ``n``: descriptions per query (one
    number, or one per example). ``score(queries, texts)`` is θ."""
    counts = [n] * len(examples) if isinstance(n, int) else list(n)
    reqs = [GenerationRequest(q, ex_text, k) for (q, _, ex_text), k in zip(examples, counts, strict=True)]
    results = source.generate_many(reqs, progress=progress)
    rows: list[P3Row] = []
    for (q, vid, ex_text), res in zip(examples, results, strict=True):
        rows.extend(
            prefilter(q, vid, ex_text, res.texts, min_chars=min_chars, max_chars=max_chars, truth_ok=res.truth_ok,
                      about=res.about)
        )
    cand = [r for r in rows if r.keep]
    if cand:
        theta = score([r.query for r in cand], [r.text for r in cand])
        for r, t in zip(cand, theta, strict=True):
            r.theta = float(t)
            if not t >= alpha:
                r.keep, r.reason = False, "theta below alpha"
    return rows, results
