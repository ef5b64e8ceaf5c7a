"""Exposure log ⨝ feedback events → the data engine's ``search_log`` and ``rec_log`` tables.

The service logs what it *returned* for a request (its top-k, one record per request); the ranking
side reports, per :mod:`core.feedback`, what it *exposed* of that, at which position, and what was
clicked and played. The join:

- every returned candidate is a ``search_log`` row. Candidates with a feedback event are
  ``stage='exposed'`` with the reported position, click and play time; the rest keep the stage the
  caller states (default ``rank_unexposed``: retrieved, not shown) and positions after the exposed
  ones in retrieval order, as the world's own logs number them;
- an exposed video the service did not return (another retrieval channel) is still an exposure: it
  becomes an ``exposed`` row and is counted;
- feed events become ``rec_log`` rows (``view`` when clicked/played, else ``skip``);
- nothing crashes the join: an invalid event, one for a request the exposure log does not hold
  (trimmed stream, foreign id), one whose user or query contradicts its request, a duplicate, or one
  arriving more than ``max_delay_ms`` after its impression's first event is dropped and counted by
  reason in :class:`JoinStats`. The input logs are only read, never rewritten.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from core.feedback import FeedbackEvent
from core.logs import REC_LOG, SEARCH_LOG

# The contract's columns (core.logs) plus what the online loop adds for per-arm analysis.
SEARCH_LOG_SCHEMA = pa.schema(
    [
        *SEARCH_LOG.schema,
        ("long_play", pa.bool_()),
        ("arm", pa.string()),
        ("bundle_id", pa.string()),
        ("session_id", pa.string()),
    ]
)
REC_LOG_SCHEMA = pa.schema([*REC_LOG.schema, ("long_play", pa.bool_()), ("arm", pa.string())])
UNEXPOSED_STAGES = ("prerank_filtered", "rank_unexposed")
#: ``unexposed_stage="exposed"``: the caller states every returned candidate was shown (no feedback join).
DEFAULT_STAGES = (*UNEXPOSED_STAGES, "exposed")
DROP_REASONS = ("bad_exposure", "invalid", "unknown_request", "user_mismatch", "query_mismatch", "duplicate", "late")


@dataclass
class JoinStats:
    """What the join read, wrote and dropped (by reason), for the caller to print and store."""

    exposure_records: int = 0
    duplicate_exposures: int = 0
    feedback_events: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    search_rows: int = 0
    exposed_rows: int = 0
    clicked_rows: int = 0
    exposed_not_retrieved: int = 0
    requests_with_feedback: int = 0
    rec_rows: int = 0

    def drop(self, reason: str, message: str) -> None:
        self.dropped[reason] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{reason}: {message}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "exposure_records": self.exposure_records,
            "duplicate_exposures": self.duplicate_exposures,
            "feedback_events": self.feedback_events,
            "dropped": {r: self.dropped.get(r, 0) for r in DROP_REASONS},
            "dropped_total": sum(self.dropped.values()),
            "first_errors": self.first_errors,
            "search_rows": self.search_rows,
            "exposed_rows": self.exposed_rows,
            "clicked_rows": self.clicked_rows,
            "exposed_not_retrieved": self.exposed_not_retrieved,
            "requests_with_feedback": self.requests_with_feedback,
            "rec_rows": self.rec_rows,
        }


def _validate(raw: Iterable[dict[str, Any] | FeedbackEvent], stats: JoinStats) -> list[FeedbackEvent]:
    out = []
    for item in raw:
        stats.feedback_events += 1
        if isinstance(item, FeedbackEvent):
            out.append(item)
            continue
        try:
            out.append(FeedbackEvent.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            stats.drop("invalid", f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}")
        except (TypeError, ValueError) as exc:  # not even a mapping
            stats.drop("invalid", str(exc)[:200])
    return out


def join_logs(
    exposures: Iterable[dict[str, Any]],
    feedback: Iterable[dict[str, Any] | FeedbackEvent],
    *,
    unexposed_stage: str = "rank_unexposed",
    max_delay_ms: int = 86_400_000,
    clock: str = "feedback",
) -> tuple[pa.Table, pa.Table, JoinStats]:
    """(search_log, rec_log, stats). ``clock='feedback'``: a request's ``ts`` is its first feedback
    event's time when it has one (the ranking side's clock, simulated or not), else the service's;
    ``clock='service'``: always the service's. ``unexposed_stage`` is the stage of a returned
    candidate without an event (``exposed``: the caller states all were shown, in retrieval order)."""
    if unexposed_stage not in DEFAULT_STAGES:
        raise ValueError(f"unexposed_stage must be one of {DEFAULT_STAGES}")
    if clock not in ("feedback", "service"):
        raise ValueError("clock must be 'feedback' or 'service'")
    stats = JoinStats()
    requests: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for rec in exposures:
        stats.exposure_records += 1
        rid = rec.get("request_id")
        if not isinstance(rid, str) or not isinstance(rec.get("video_ids"), list):
            stats.drop("bad_exposure", f"exposure record without request_id/video_ids: {str(rec)[:120]}")
            continue
        if rid in requests:  # a retried request id: the first answer is what the ranker saw
            stats.duplicate_exposures += 1
            continue
        requests[rid] = rec
        order.append(rid)

    events = _validate(feedback, stats)
    # first event time per impression (for lateness), then per-request video → event
    first_ts: dict[str, int] = {}
    for e in events:
        first_ts[e.request_id] = min(first_ts.get(e.request_id, e.ts_ms), e.ts_ms)
    search_ev: dict[str, dict[str, FeedbackEvent]] = {}
    feed_seen: set[tuple[str, str]] = set()
    rec_cols: dict[str, list[Any]] = {n: [] for n in REC_LOG_SCHEMA.names}
    for e in sorted(events, key=lambda x: (x.ts_ms, x.request_id, x.video_id)):
        if e.ts_ms - first_ts[e.request_id] > max_delay_ms:
            stats.drop("late", f"{e.request_id}/{e.video_id} {e.ts_ms - first_ts[e.request_id]} ms after its first")
            continue
        if e.source == "feed":
            key = (e.request_id, e.video_id)
            if key in feed_seen:
                stats.drop("duplicate", f"feed {e.request_id}/{e.video_id}")
                continue
            feed_seen.add(key)
            rec_cols["user_id"].append(e.user_id)
            rec_cols["ts"].append(e.ts_ms)
            rec_cols["video_id"].append(e.video_id)
            rec_cols["action"].append("view" if (e.clicked or e.play_ms > 0) else "skip")
            rec_cols["play_ms"].append(e.play_ms)
            rec_cols["long_play"].append(e.long_play)
            rec_cols["arm"].append(e.arm)
            continue
        req = requests.get(e.request_id)
        if req is None:
            stats.drop("unknown_request", f"{e.request_id} is not in the exposure log")
            continue
        user = req.get("user_id") or req.get("unit")
        if user is not None and e.user_id != user:
            stats.drop("user_mismatch", f"{e.request_id}: event user {e.user_id!r}, request user {user!r}")
            continue
        if e.query != req.get("query"):
            stats.drop("query_mismatch", f"{e.request_id}: event query {e.query!r}, request {req.get('query')!r}")
            continue
        per = search_ev.setdefault(e.request_id, {})
        if e.video_id in per:
            stats.drop("duplicate", f"{e.request_id}/{e.video_id}")
            continue
        per[e.video_id] = e

    cols: dict[str, list[Any]] = {n: [] for n in SEARCH_LOG_SCHEMA.names}

    def row(rid: str, rec: dict[str, Any], ts: int, vid: str, stage: str, pos: int, ev: FeedbackEvent | None) -> None:
        cols["request_id"].append(rid)
        cols["user_id"].append(rec.get("user_id") or rec.get("unit"))
        cols["ts"].append(ts)
        cols["query"].append(rec.get("query"))
        cols["video_id"].append(vid)
        cols["stage"].append(stage)
        cols["position"].append(pos)
        cols["clicked"].append(bool(ev and ev.clicked))
        cols["play_ms"].append(ev.play_ms if ev else 0)
        cols["long_play"].append(bool(ev and ev.long_play))
        cols["arm"].append(rec.get("arm"))
        cols["bundle_id"].append(rec.get("bundle_id"))
        cols["session_id"].append(ev.session_id if ev else None)

    for rid in order:
        rec = requests[rid]
        evs = search_ev.get(rid, {})
        ts = min(e.ts_ms for e in evs.values()) if (evs and clock == "feedback") else int(rec.get("ts") or 0)
        if evs:
            stats.requests_with_feedback += 1
        returned = [str(v) for v in rec["video_ids"]]
        returned_set = set(returned)
        exposed = sorted(evs.values(), key=lambda e: (e.position if e.position is not None else 1 << 30, e.video_id))
        for i, e in enumerate(exposed):
            pos = e.position if e.position is not None else i
            row(rid, rec, ts, e.video_id, "exposed", pos, e)
            if e.video_id not in returned_set:
                stats.exposed_not_retrieved += 1
        nxt = max((e.position for e in exposed if e.position is not None), default=-1) + 1
        nxt = max(nxt, len(exposed))
        for vid in returned:
            if vid not in evs:
                row(rid, rec, ts, vid, unexposed_stage, nxt, None)
                nxt += 1
    # the core contracts' columns (and version stamp), plus per-arm analysis columns
    search = SEARCH_LOG.stamp(pa.table(cols, schema=SEARCH_LOG_SCHEMA))
    rec_log = REC_LOG.stamp(pa.table(rec_cols, schema=REC_LOG_SCHEMA))
    stats.search_rows = search.num_rows
    stats.exposed_rows = sum(1 for s in cols["stage"] if s == "exposed")
    stats.clicked_rows = sum(cols["clicked"])
    stats.rec_rows = rec_log.num_rows
    return search, rec_log, stats


class _Unreadable(dict):  # type: ignore[type-arg,unused-ignore]
    """A log line that is not JSON: it reaches the join and is counted as invalid there."""


def _records(raw: bytes) -> Iterator[dict[str, Any]]:
    """The record(s) in one log entry: an object, each event of ``{"events": [...]}``, or, for
    anything that is not a JSON object (a torn line after a crash), one ``_Unreadable`` mapping that
    the join counts as invalid instead of stopping."""
    try:
        obj = json.loads(raw)
    except ValueError:
        yield _Unreadable()
        return
    if isinstance(obj, dict) and isinstance(obj.get("events"), list):
        yield from obj["events"]
    else:
        yield obj if isinstance(obj, dict) else _Unreadable()


def read_jsonl_records(path: Path | str) -> Iterator[dict[str, Any]]:
    """Records of a JSONL log (its rotated ``.1`` predecessor first), per ``_records``."""
    path = Path(path)
    for p in (path.with_suffix(path.suffix + ".1"), path):
        if not p.is_file():
            continue
        with p.open("rb") as fh:
            for line in fh:
                if line.strip():
                    yield from _records(line)


def read_stream_records(redis_url: str, key: str, batch: int = 10_000) -> Iterator[dict[str, Any]]:
    """Records of a Redis stream (each entry one JSON record in its single field), oldest first, per
    ``_records``."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        start = "-"
        while True:
            rows: Any = client.xrange(key, min=start, count=batch)
            for _, fields in rows:
                yield from _records(next(iter(fields.values()), b""))
            if len(rows) < batch:
                return
            start = "(" + rows[-1][0].decode()
    finally:
        client.close()
