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

``crops-pos-terms`` is our ablation (not in the paper): it keeps HLA's order among positives (5 over
4) and the log stages as negatives, but drops the terms that make a level-3/2/1 doc a positive over
the levels below it, i.e. that reward resembling what the legacy stack retrieved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

LOG_STAGES = ("exposed_unclicked", "rank_unexposed", "prerank_filtered")
ALL_SOURCES = ("p0_click", "p1_reformulation", "p2_rec", "p3_llm", *LOG_STAGES)


def _binary(level: int, source: str) -> int:
    return 1 if level >= 4 else 0


def _click_level(level: int, source: str) -> int:
    return 4 if source == "p0_click" else level


@dataclass(frozen=True)
class MethodSpec:
    name: str
    sources: tuple[str, ...] | None  # None: no training (BM25)
    loss: str = "hinfonce"
    hard_negatives: str = "none"
    level_map: Callable[[int, str], int] | None = None
    pos_level: int = 4
    term_min_level: int = 1


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
    "crops-pos-terms": MethodSpec("crops-pos-terms", ALL_SOURCES, term_min_level=4),
    "crops-pos-terms-ance": MethodSpec(
        "crops-pos-terms-ance", ALL_SOURCES, hard_negatives="ance", term_min_level=4
    ),
}
