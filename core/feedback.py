"""The feedback-event contract shared by the service (`POST /feedback`) and the online loop.

One event per exposed video: an exposure that was not clicked is an event with ``clicked=False``.
The pydantic model validates events at the boundary; the pyarrow schema is the on-disk form of the
same fields, so a Parquet file of events and the HTTP body describe one thing.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

FEEDBACK_SCHEMA_VERSION = 1

#: Most events one ``POST /feedback`` may carry.
MAX_EVENTS_PER_POST = 1000


class FeedbackEvent(BaseModel):
    """What one user did with one exposed video."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=128, description="the /retrieve request id (feed: impression id)")
    user_id: str = Field(min_length=1, max_length=128)
    session_id: str | None = Field(default=None, max_length=128)
    arm: str | None = Field(default=None, max_length=64, description="the x-crops-arm the service answered")
    source: Literal["search", "feed"]
    query: str | None = Field(default=None, max_length=2048, description="required when source == 'search'")
    video_id: str = Field(min_length=1, max_length=128)
    position: int | None = Field(default=None, ge=0, le=100_000, description="0-based rank exposed; None for feed")
    ts_ms: int = Field(ge=0, le=2**62, description="event time in (epoch or simulated) milliseconds")
    clicked: bool
    play_ms: int = Field(ge=0, le=2**62)
    long_play: bool

    @model_validator(mode="after")
    def _search_has_query(self) -> FeedbackEvent:
        if self.source == "search" and not self.query:
            raise ValueError("query is required when source == 'search'")
        return self


class FeedbackBatch(BaseModel):
    """The body of ``POST /feedback``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    events: list[FeedbackEvent] = Field(min_length=1, max_length=MAX_EVENTS_PER_POST)


FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=True),
        pa.field("arm", pa.string(), nullable=True),
        pa.field("source", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=True),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("position", pa.int64(), nullable=True),
        pa.field("ts_ms", pa.int64(), nullable=False),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("play_ms", pa.int64(), nullable=False),
        pa.field("long_play", pa.bool_(), nullable=False),
    ],
    metadata={b"crops_feedback_schema_version": str(FEEDBACK_SCHEMA_VERSION).encode()},
)


def events_to_table(events: list[FeedbackEvent]) -> pa.Table:
    """Events → an Arrow table with ``FEEDBACK_SCHEMA`` (column order as in the schema)."""
    rows: list[dict[str, Any]] = [e.model_dump() for e in events]
    return pa.Table.from_pylist(rows, schema=FEEDBACK_SCHEMA)


def table_to_events(table: pa.Table) -> list[FeedbackEvent]:
    """An Arrow table holding the schema's columns → validated events (other columns are ignored)."""
    return [FeedbackEvent.model_validate(row) for row in table.select(FEEDBACK_SCHEMA.names).to_pylist()]
