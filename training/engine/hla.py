"""Hierarchical Label Assignment: the six levels and the sources that produce them (paper, DESIGN §4)."""

from __future__ import annotations

from typing import Final

# source → HLA level. Level 0 (in-batch negatives) is assigned at training time, never here.
LEVELS: Final[dict[str, int]] = {
    "p1_reformulation": 5,
    "p0_click": 4,
    "p2_rec": 4,
    "p3_llm": 4,
    "exposed_unclicked": 3,
    "rank_unexposed": 2,
    "prerank_filtered": 1,
}

# When two sources give the same (query, video) the highest level wins; at equal level the
# observed signal (a click) is kept over inferred ones so the source column stays informative.
SOURCE_PRIORITY: Final[tuple[str, ...]] = (
    "p1_reformulation",
    "p0_click",
    "p2_rec",
    "p3_llm",
    "exposed_unclicked",
    "rank_unexposed",
    "prerank_filtered",
)

SOURCES: Final[frozenset[str]] = frozenset(LEVELS)
POSITIVE_SOURCES: Final[tuple[str, ...]] = ("p0_click", "p1_reformulation", "p2_rec", "p3_llm")
ADDED_SOURCES: Final[tuple[str, ...]] = ("p1_reformulation", "p2_rec", "p3_llm")


def level_of(source: str) -> int:
    """The HLA level of a sample source (KeyError for an unknown source)."""
    return LEVELS[source]
