"""The exposure ⨝ feedback join: what becomes a row, what is dropped and counted."""

from __future__ import annotations

import json
from pathlib import Path

from online.joinlogs import join_logs, read_jsonl_records


def _exp(rid: str, user: str, query: str, vids: list[str], ts: int = 1_000) -> dict:
    return {"request_id": rid, "unit": user, "user_id": user, "ts": ts, "query": query, "arm": "control",
            "bundle_id": "b1", "video_ids": vids, "scores": [1.0] * len(vids)}


def _ev(rid: str, user: str, query: str | None, vid: str, pos: int | None, clicked: bool, ts: int = 5_000,
        source: str = "search", play: int = 0) -> dict:
    return {"request_id": rid, "user_id": user, "session_id": "s1", "arm": "control", "source": source,
            "query": query, "video_id": vid, "position": pos, "ts_ms": ts, "clicked": clicked,
            "play_ms": play, "long_play": play > 10_000}


def test_exposed_rows_carry_feedback_and_unexposed_follow() -> None:
    exps = [_exp("r1", "u1", "cats", ["a", "b", "c", "d"])]
    evs = [_ev("r1", "u1", "cats", "c", 0, True, play=20_000), _ev("r1", "u1", "cats", "a", 1, False)]
    search, rec, st = join_logs(exps, evs)
    rows = {r["video_id"]: r for r in search.to_pylist()}
    assert rows["c"]["stage"] == "exposed" and rows["c"]["clicked"] and rows["c"]["position"] == 0
    assert rows["c"]["play_ms"] == 20_000 and rows["c"]["long_play"]
    assert rows["a"]["stage"] == "exposed" and not rows["a"]["clicked"] and rows["a"]["position"] == 1
    assert rows["b"]["stage"] == "rank_unexposed" and rows["b"]["position"] == 2
    assert rows["d"]["position"] == 3
    assert all(r["ts"] == 5_000 for r in rows.values())  # the ranking side's clock
    assert st.exposed_rows == 2 and st.clicked_rows == 1 and rec.num_rows == 0
    assert sum(st.dropped.values()) == 0


def test_bad_unknown_mismatched_duplicate_and_late_events_are_counted_not_fatal() -> None:
    exps = [_exp("r1", "u1", "cats", ["a", "b"]), _exp("r1", "u1", "cats", ["a", "b"]), {"garbage": 1}]
    evs = [
        _ev("r1", "u1", "cats", "a", 0, True),
        _ev("r1", "u1", "cats", "a", 0, False, ts=5_001),  # duplicate
        _ev("r9", "u1", "cats", "a", 0, True),  # unknown request
        _ev("r1", "u2", "cats", "b", 1, True),  # another user
        _ev("r1", "u1", "dogs", "b", 1, True),  # another query
        _ev("r1", "u1", "cats", "b", 1, True, ts=5_000 + 2 * 86_400_000),  # late
        {**_ev("r1", "u1", "cats", "b", 1, True), "clicked": "yes"},  # invalid
        {**_ev("r1", "u1", None, "b", 1, True)},  # search without query: invalid
        "not a mapping",
    ]
    search, _, st = join_logs(exps, evs)  # type: ignore[arg-type]
    d = st.as_dict()
    assert d["dropped"] == {"bad_exposure": 1, "invalid": 3, "unknown_request": 1, "user_mismatch": 1,
                            "query_mismatch": 1, "duplicate": 1, "late": 1}
    assert d["duplicate_exposures"] == 1
    rows = {r["video_id"]: r for r in search.to_pylist()}
    assert rows["a"]["clicked"] and rows["b"]["stage"] == "rank_unexposed"  # nothing logged is lost
    assert len(d["first_errors"]) == 5


def test_feed_events_become_rec_log_and_foreign_exposures_are_kept() -> None:
    exps = [_exp("r1", "u1", "cats", ["a"])]
    evs = [_ev("f1", "u1", None, "x", None, True, source="feed", play=3_000),
           _ev("f1", "u1", None, "y", None, False, source="feed"),
           _ev("r1", "u1", "cats", "z", 0, True)]  # exposed though another channel retrieved it
    search, rec, st = join_logs(exps, evs)
    assert rec.to_pydict()["action"] == ["view", "skip"]
    assert {"user_id", "ts", "video_id", "action", "play_ms"} <= set(rec.column_names)
    assert st.exposed_not_retrieved == 1
    assert [r["video_id"] for r in search.to_pylist()] == ["z", "a"]


def test_jsonl_reader_survives_a_torn_line(tmp_path: Path) -> None:
    p = tmp_path / "feedback.jsonl"
    good = _ev("r1", "u1", "cats", "a", 0, True)
    p.write_text(json.dumps({"events": [good, good]}) + "\n" + json.dumps(good)[:30] + "\n")
    recs = list(read_jsonl_records(p))
    assert len(recs) == 3
    _, _, st = join_logs([_exp("r1", "u1", "cats", ["a"])], recs)
    assert st.dropped["invalid"] == 1 and st.dropped["duplicate"] == 1
