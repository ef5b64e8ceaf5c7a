"""`crops exposures` on hand-written logs: joined tables, counted drops, one error line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq


def _crops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crops", *args], capture_output=True, text=True)


def test_join_writes_tables_and_counts_bad_events(tmp_path: Path) -> None:
    exp = tmp_path / "exposures.jsonl"
    exp.write_text(json.dumps({"request_id": "r1", "unit": "u1", "user_id": "u1", "ts": 5, "query": "cats",
                               "arm": "control", "bundle_id": "b", "video_ids": ["a", "b"], "scores": [1, 0]}) + "\n")
    ev = {"request_id": "r1", "user_id": "u1", "session_id": None, "arm": "control", "source": "search",
          "query": "cats", "video_id": "b", "position": 0, "ts_ms": 9, "clicked": True, "play_ms": 10,
          "long_play": False}
    fb = tmp_path / "feedback.jsonl"
    fb.write_text(json.dumps(ev) + "\n" + json.dumps({**ev, "request_id": "nope"}) + "\n{torn\n")
    out = tmp_path / "logs"
    r = _crops("exposures", "--jsonl", str(exp), "--feedback-jsonl", str(fb), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "dropped 2" in r.stdout and "unknown_request=1" in r.stdout and "invalid=1" in r.stdout
    rows = pq.read_table(out / "search_log.parquet").to_pylist()
    assert [(x["video_id"], x["stage"], x["clicked"], x["position"]) for x in rows] == [
        ("b", "exposed", True, 0), ("a", "rank_unexposed", False, 1)]
    assert pq.read_table(out / "rec_log.parquet").num_rows == 0
    assert json.loads((out / "join.json").read_text())["dropped_total"] == 2


def test_missing_feedback_file_is_one_error_line(tmp_path: Path) -> None:
    exp = tmp_path / "exposures.jsonl"
    exp.write_text("")
    r = _crops("exposures", "--jsonl", str(exp), "--feedback-jsonl", str(tmp_path / "nope.jsonl"), "--out",
               str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
