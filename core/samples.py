"""The labelled-samples contract: sample sources, their HLA levels, the positive rule, the table.

The data engine writes ``samples.parquet`` with these columns; the trainer and the baselines read it.
Every level a source gets, and the rule that a level of ``POSITIVE_LEVEL`` or more is a positive, is
declared here once (the method itself is described in docs/explanation/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pyarrow as pa

SAMPLES_SCHEMA_VERSION: Final = 1
SAMPLES_FILE: Final = "samples.parquet"


@dataclass(frozen=True)
class SampleSource:
    """Where a (query, video) sample comes from and the HLA level it gets."""

    name: str
    level: int
    perspective: str  # "search" (P0 and the log stages), "reformulation" (P1), "rec" (P2), "llm" (P3)
    description: str


# In priority order: when two sources label the same (query, video) the highest level wins; at an
# equal level the observed signal (a click) is kept over inferred ones so the source stays informative.
# Level 0 (in-batch negatives) is assigned at training time and has no source.
SAMPLE_SOURCES: Final[tuple[SampleSource, ...]] = (
    SampleSource("p1_reformulation", 5, "reformulation", "clicked after the user reformulated a query (P1)"),
    SampleSource("p0_click", 4, "search", "clicked in the search log (P0)"),
    SampleSource("p2_rec", 4, "rec", "watched in the recommender feed around the search session (P2)"),
    SampleSource("p3_llm", 4, "llm", "a video description written by an LLM and kept by the discriminator (P3)"),
    SampleSource("exposed_unclicked", 3, "search", "shown to the user, not clicked"),
    SampleSource("rank_unexposed", 2, "search", "reached the ranker, never shown"),
    SampleSource("prerank_filtered", 1, "search", "dropped by the pre-ranker"),
)

#: source name → HLA level.
LEVELS: Final[dict[str, int]] = {s.name: s.level for s in SAMPLE_SOURCES}
#: source names, highest priority first.
SOURCE_PRIORITY: Final[tuple[str, ...]] = tuple(s.name for s in SAMPLE_SOURCES)
#: every source, in the order the method tables list them.
ALL_SOURCES: Final[tuple[str, ...]] = ("p0_click", "p1_reformulation", "p2_rec", "p3_llm",
                                       "exposed_unclicked", "rank_unexposed", "prerank_filtered")
#: the stages of the legacy search stack that produce negatives.
LOG_STAGES: Final[tuple[str, ...]] = ("exposed_unclicked", "rank_unexposed", "prerank_filtered")

#: A sample at this level or above is a positive; below it, a graded negative.
POSITIVE_LEVEL: Final = 4
#: Levels a sample may carry (0 is the in-batch negative).
MAX_LEVEL: Final = max(LEVELS.values())


def check_samples_version(metadata: dict[bytes, bytes] | None, where: str) -> None:
    """Refuse samples written by a newer schema than this code knows (``INCOMPATIBLE``)."""
    from core.errors import CropsError, ErrorKind

    version = int((metadata or {}).get(b"crops.schema_version", b"1"))
    if version > SAMPLES_SCHEMA_VERSION:
        raise CropsError(
            ErrorKind.INCOMPATIBLE,
            f"{where}: samples schema version {version} is newer than this code's {SAMPLES_SCHEMA_VERSION}",
        )


def is_positive(level: int) -> bool:
    """Whether a sample at ``level`` is a positive (the "level ≥ 4" rule)."""
    return level >= POSITIVE_LEVEL


#: Columns the trainer needs (``video_id`` or ``text`` may be null: P3 positives are texts).
SAMPLE_COLUMNS: Final[tuple[str, ...]] = ("query", "video_id", "text", "level", "source")

SAMPLES_SCHEMA: Final = pa.schema(
    [
        ("query", pa.string()),
        ("video_id", pa.string()),
        ("text", pa.string()),
        ("level", pa.int8()),
        ("source", pa.string()),
        ("theta", pa.float64()),
        ("exposed_ever", pa.bool_()),
    ],
    metadata={b"crops.table": b"samples", b"crops.schema_version": str(SAMPLES_SCHEMA_VERSION).encode()},
)
