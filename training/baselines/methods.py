"""Table-1 methods as trainer configurations over the data engine's samples.

| method       | positives                        | negatives                               | loss      |
|--------------|----------------------------------|-----------------------------------------|-----------|
| bm25         | —                                | —                                       | no training |
| dpr          | clicks (P0)                      | in-batch + BM25 hard negatives          | InfoNCE   |
| ance         | clicks                           | in-batch + ANN negatives (refreshed)    | InfoNCE   |
| fs-lr        | clicks (level 4)                 | log stages 3 / 2 / 1 + in-batch 0       | H-InfoNCE |
| crops        | P0 + P1 (5) + P2 + P3 (4)        | log stages 3 / 2 / 1 + in-batch 0       | H-InfoNCE |
| crops-no-pK  | crops without source pK          | same                                    | H-InfoNCE |
| crops-binary | crops' data, level ≥ 4 → 1, else 0 | same docs, one level                  | InfoNCE   |
| crops-pos-terms | crops' data and levels      | same; levels 1-3 only as negatives      | H-InfoNCE ≥ 4 |
| crops-pos-terms-ance | same                       | same + ANN negatives (refreshed)        | H-InfoNCE ≥ 4 |
| crops-inherit | crops                          | same; the old batch (see below)         | H-InfoNCE |
| p0-binary    | clicks, level ≥ 4 → 1, else 0    | log stages + in-batch, one level        | InfoNCE   |
| dpr+p123     | P0 + P1 + P2 + P3, all as positives | in-batch + BM25 hard negatives       | InfoNCE   |
| dpr+p1 / dpr+p2 / dpr+p3 | P0 + one perspective | in-batch + BM25 hard negatives          | InfoNCE   |

The controls answer the paper's own question, "the same training, plus the added positives":
``dpr+p123`` vs ``dpr`` and ``crops-binary`` vs ``p0-binary`` change only the positive set;
``dpr+p1/p2/p3`` add one perspective at a time.

``crops-inherit`` keeps the old batch as an ablation: a query inherits its labels on the docs other
queries drew, and each query's docs are drawn round-robin over its levels.

``crops-pos-terms`` is our ablation (not in the paper): it keeps HLA's order among positives (5 over
4) and the log stages as negatives, but drops the terms that make a level-3/2/1 doc a positive over
the levels below it, i.e. that reward resembling what the legacy stack retrieved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.samples import ALL_SOURCES, LOG_STAGES, POSITIVE_LEVEL, is_positive


def _binary(level: int, source: str) -> int:
    return 1 if is_positive(level) else 0


def _click_level(level: int, source: str) -> int:
    return POSITIVE_LEVEL if source == "p0_click" else level


def _positive(level: int, source: str) -> int:
    """Every positive source at one level (DPR's binary view of the enriched set)."""
    return POSITIVE_LEVEL if is_positive(level) else level


@dataclass(frozen=True)
class MethodSpec:
    name: str
    sources: tuple[str, ...] | None  # None: no training (BM25)
    loss: str = "hinfonce"
    hard_negatives: str = "none"
    level_map: Callable[[int, str], int] | None = None
    pos_level: int = POSITIVE_LEVEL
    term_min_level: int = 1
    overrides: tuple[tuple[str, Any], ...] = ()  # other TrainConfig fields of this method


OLD_BATCH = (("batch_labels", "inherit"), ("sampling", "stratified"))


def _dpr_plus(name: str, *added: str) -> MethodSpec:
    return MethodSpec(name, ("p0_click", *added), loss="infonce", hard_negatives="bm25", level_map=_positive)


METHODS: dict[str, MethodSpec] = {
    "bm25": MethodSpec("bm25", None),
    "dpr": MethodSpec("dpr", ("p0_click",), loss="infonce", hard_negatives="bm25", level_map=_click_level),
    "ance": MethodSpec("ance", ("p0_click",), loss="infonce", hard_negatives="ance", level_map=_click_level),
    "fs-lr": MethodSpec("fs-lr", ("p0_click", *LOG_STAGES), level_map=_click_level),
    "crops": MethodSpec("crops", ALL_SOURCES),
    "crops-no-p1": MethodSpec("crops-no-p1", tuple(s for s in ALL_SOURCES if s != "p1_reformulation")),
    "crops-no-p2": MethodSpec("crops-no-p2", tuple(s for s in ALL_SOURCES if s != "p2_rec")),
    "crops-no-p3": MethodSpec("crops-no-p3", tuple(s for s in ALL_SOURCES if s != "p3_llm")),
    "crops-binary": MethodSpec("crops-binary", ALL_SOURCES, loss="infonce", level_map=_binary, pos_level=1),
    "crops-pos-terms": MethodSpec("crops-pos-terms", ALL_SOURCES, term_min_level=POSITIVE_LEVEL),
    "crops-pos-terms-ance": MethodSpec(
        "crops-pos-terms-ance", ALL_SOURCES, hard_negatives="ance", term_min_level=POSITIVE_LEVEL
    ),
    "crops-inherit": MethodSpec("crops-inherit", ALL_SOURCES, overrides=OLD_BATCH),
    "p0-binary": MethodSpec(
        "p0-binary", ("p0_click", *LOG_STAGES), loss="infonce", level_map=_binary, pos_level=1
    ),
    "dpr+p123": _dpr_plus("dpr+p123", "p1_reformulation", "p2_rec", "p3_llm"),
    "dpr+p1": _dpr_plus("dpr+p1", "p1_reformulation"),
    "dpr+p2": _dpr_plus("dpr+p2", "p2_rec"),
    "dpr+p3": _dpr_plus("dpr+p3", "p3_llm"),
}
