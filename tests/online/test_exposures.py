"""``online.exposures.export_logs``: the tables it writes from JSONL logs, and the sources it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.errors import CropsError, ErrorKind
from core.logs import REC_LOG, SEARCH_LOG
from online.exposures import LogSource, export_logs


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"torn": \n')
    return path


def _exposure(rid: str, vids: list[str]) -> dict:
    return {"request_id": rid, "unit": "u1", "user_id": "u1", "ts": 1_000, "query": "cats", "arm": "a",
            "bundle_id": "b", "video_ids": vids, "scores": [1.0] * len(vids)}


def test_folder_output_has_both_tables_and_the_join_stats(tmp_path: Path) -> None:
    exp = _write(tmp_path / "exposures.jsonl", [_exposure("r1", ["a", "b", "c"])])
    fb = _write(tmp_path / "feedback.jsonl", [
        {"request_id": "r1", "user_id": "u1", "session_id": "s", "arm": "a", "source": "search", "query": "cats",
         "video_id": "b", "position": 0, "ts_ms": 2_000, "clicked": True, "play_ms": 30_000, "long_play": True},
    ])
    stats = export_logs(LogSource(jsonl=exp, feedback_jsonl=(fb,)), tmp_path / "out")
    search = pq.read_table(tmp_path / "out" / "search_log.parquet")
    SEARCH_LOG.check(search.schema)
    REC_LOG.check(pq.read_schema(tmp_path / "out" / "rec_log.parquet"))
    rows = {r["video_id"]: r for r in search.to_pylist()}
    assert rows["b"]["stage"] == "exposed" and rows["b"]["clicked"] and rows["a"]["stage"] == "rank_unexposed"
    joined = json.loads((tmp_path / "out" / "join.json").read_text())
    assert joined["clicked_rows"] == 1 and stats.dropped["invalid"] == 1  # the torn feedback line, counted


def test_stage_exposed_numbers_candidates_in_retrieval_order(tmp_path: Path) -> None:
    exp = _write(tmp_path / "exposures.jsonl", [_exposure("r1", ["a", "b", "c"])])
    export_logs(LogSource(jsonl=exp), tmp_path / "s.parquet", stage="exposed")
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [(r["video_id"], r["stage"], r["position"]) for r in rows] == [
        ("a", "exposed", 0), ("b", "exposed", 1), ("c", "exposed", 2)]


@pytest.mark.parametrize(
    ("source", "kwargs", "kind"),
    [
        (LogSource(), {}, ErrorKind.INVALID_INPUT),
        (LogSource(jsonl=Path("/nonexistent/exposures.jsonl")), {}, ErrorKind.NOT_FOUND),
        (LogSource(jsonl=Path(__file__), redis_url="redis://x"), {}, ErrorKind.INVALID_INPUT),
        (LogSource(jsonl=Path(__file__)), {"stage": "shown"}, ErrorKind.INVALID_INPUT),
        (LogSource(jsonl=Path(__file__)), {"clock": "wall"}, ErrorKind.INVALID_INPUT),
        (LogSource(jsonl=Path(__file__), feedback_jsonl=(Path(__file__),)), {"stage": "exposed"},
         ErrorKind.INVALID_INPUT),
    ],
)
def test_bad_sources_and_options_are_one_clear_error(
    tmp_path: Path, source: LogSource, kwargs: dict, kind: ErrorKind
) -> None:
    with pytest.raises(CropsError) as info:
        export_logs(source, tmp_path / "out", **kwargs)
    assert info.value.kind == kind
    assert not (tmp_path / "out").exists()
