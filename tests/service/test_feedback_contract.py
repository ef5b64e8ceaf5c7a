"""The shared feedback-event contract (core/feedback.py): validation and the Arrow round trip."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.feedback import FEEDBACK_SCHEMA, FeedbackBatch, FeedbackEvent, events_to_table, table_to_events


def _event(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "request_id": "r1",
        "user_id": "u1",
        "session_id": None,
        "arm": "control",
        "source": "search",
        "query": "cat video",
        "video_id": "v9",
        "position": 3,
        "ts_ms": 1000,
        "clicked": True,
        "play_ms": 5000,
        "long_play": False,
    }
    base.update(kw)
    return base


def test_fields_of_model_and_arrow_schema_agree() -> None:
    assert list(FeedbackEvent.model_fields) == FEEDBACK_SCHEMA.names


def test_round_trip_through_arrow() -> None:
    events = [
        FeedbackEvent.model_validate(_event()),
        FeedbackEvent.model_validate(_event(source="feed", query=None, position=None)),
    ]
    assert table_to_events(events_to_table(events)) == events


@pytest.mark.parametrize(
    "bad",
    [
        {"source": "search", "query": None},  # a search event needs its query
        {"source": "ads"},
        {"position": -1},
        {"ts_ms": -5},
        {"play_ms": "10"},  # strict: no string → int coercion
        {"clicked": 1},
        {"extra": "x"},
    ],
)
def test_bad_events_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FeedbackEvent.model_validate(_event(**bad))


def test_batch_bounds_and_json() -> None:
    with pytest.raises(ValidationError):
        FeedbackBatch.model_validate_json('{"events": []}')
    batch = FeedbackBatch.model_validate_json(
        '{"events": [' + FeedbackEvent.model_validate(_event()).model_dump_json() + "]}"
    )
    assert batch.events[0].video_id == "v9"
