"""Each perspective on hand-made logs with known answers (DuckDB engine, fake θ, fake LLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from training.engine.config import MineConfig
from training.engine.llm_client import SimulatedSource
from training.engine.pipeline import mine

from .handmade import FakeLLM, build_logs, fake_theta


def _run(
    tmp: Path, cfg: MineConfig | None = None, **kw: Any
) -> tuple[dict[tuple[str, str | None, str | None], dict[str, Any]], Any]:
    logs = tmp / "logs"
    if not logs.exists():
        build_logs(logs)
    cfg = cfg or MineConfig(p3_n=5, p3_sampling="all")
    res = mine(
        logs,
        tmp / "out",
        cfg,
        engine="duckdb",
        scorer=fake_theta,
        source=SimulatedSource(FakeLLM(), model="fake-llm", cache_dir=tmp / "out" / "cache"),
        progress=False,
        **kw,
    )
    rows = pq.read_table(res.samples).to_pylist()
    return {(r["query"], r["video_id"], r["text"]): r for r in rows}, res


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[Any, dict[str, Any]], Any]:
    return _run(tmp_path_factory.mktemp("mine"))


def _get(rows: dict[Any, dict[str, Any]], q: str, v: str) -> dict[str, Any] | None:
    return rows.get((q, v, None))


def test_log_stages_and_clicks(mined: Any) -> None:
    rows, _ = mined
    assert _get(rows, "transformer", "v1")["source"] == "p0_click"
    assert _get(rows, "transformer", "v1")["level"] == 4
    assert _get(rows, "transformer", "v4")["source"] == "prerank_filtered"
    assert _get(rows, "transformer", "v4")["level"] == 1
    assert _get(rows, "cat", "v9")["source"] == "exposed_unclicked"
    assert _get(rows, "cat", "v9")["level"] == 3
    assert _get(rows, "cat", "v9")["exposed_ever"] is True
    assert _get(rows, "transformer", "v4")["exposed_ever"] is False
    assert {r["source"] for r in rows.values()} <= {
        "p0_click",
        "p1_reformulation",
        "p2_rec",
        "p3_llm",
        "exposed_unclicked",
        "rank_unexposed",
        "prerank_filtered",
    }


def test_p1_window_edge_and_alpha_edge(mined: Any) -> None:
    rows, _ = mined
    # follow-up exactly 90 s later: its clicks become P1 candidates of the ORIGINAL query
    assert _get(rows, "transformer", "v5")["source"] == "p1_reformulation"
    assert _get(rows, "transformer", "v5")["level"] == 5
    assert _get(rows, "transformer", "v5")["exposed_ever"] is False
    # level precedence: exposed-unclicked (3) for the original query loses to P1 (5)
    assert _get(rows, "transformer", "v2")["level"] == 5
    assert _get(rows, "transformer", "v2")["exposed_ever"] is True
    # θ == α is not > α; θ < α dropped
    assert _get(rows, "transformer", "v7") is None
    assert _get(rows, "transformer", "v8") is None
    # 90.001 s is outside the window; the same query repeated is not a reformulation
    assert all(not (k[0] == "cat" and r["source"] == "p1_reformulation") for k, r in rows.items())
    assert all(not (k[0] == "dog" and r["source"] == "p1_reformulation") for k, r in rows.items())
    # theta is attached to P1 rows
    assert _get(rows, "transformer", "v5")["theta"] == pytest.approx(0.9)


def test_p2_cap_window_and_precedence(mined: Any) -> None:
    rows, _ = mined
    p2_guitar = {k[1] for k, r in rows.items() if k[0] == "guitar" and r["source"] == "p2_rec"}
    expected = {f"g{i:03d}" for i in range(100)} | {"edge_in"}
    assert p2_guitar == expected  # 100 nearest of u3's 120, + u5's edge-of-window video
    assert _get(rows, "guitar", "edge_out") is None
    assert _get(rows, "guitar", "r_low") is None  # θ below α
    assert _get(rows, "guitar", "other_user") is None
    # clicked and in the rec feed: same level 4, the click is kept as the source
    assert _get(rows, "guitar", "v13")["source"] == "p0_click"
    # ranked-unexposed (2) for "transformer", P2 (4) wins
    assert _get(rows, "transformer", "v3")["source"] == "p2_rec"
    assert _get(rows, "transformer", "v3")["level"] == 4
    assert _get(rows, "power transformer", "v3")["exposed_ever"] is False


def test_p3_filter_and_alpha_ge(mined: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    rows, res = mined
    p3 = [r for r in rows.values() if r["source"] == "p3_llm"]
    queries_with_clicks = {"transformer", "power transformer", "kitten", "dog", "guitar"}
    assert {r["query"] for r in p3} == queries_with_clicks
    assert all(r["video_id"] is None and "theta=0.60" in r["text"] and r["level"] == 4 for r in p3)
    assert all(r["theta"] == pytest.approx(0.6) for r in p3)
    reasons = res.report["perspectives"]["P3"]["reasons"]
    n = len(queries_with_clicks)
    assert reasons == {"ok": n, "theta below alpha": n, "duplicate": n, "copy of example": n, "too short": n}
    # P3 precision/recall of the θ filter against the fake's hallucination labels (θ ≥ α kept)
    sweep = {r["alpha"]: r for r in res.report["alpha_sweep"]["P3"]}
    assert sweep[0.6]["kept"] == n and sweep[0.6]["precision"] == 1.0 and sweep[0.6]["recall"] == 1.0
    assert sweep[0.5]["kept"] == 2 * n and sweep[0.5]["precision"] == 0.5
    assert sweep[0.7]["kept"] == 0 and sweep[0.7]["recall"] == 0.0
    llm_pos = pq.read_table(res.out / "llm_positives.parquet")
    assert llm_pos.num_rows == n
    assert set(llm_pos.column_names) == {"query", "text", "example_video_id", "model", "prompt_version"}


def test_one_row_per_key_and_schema(mined: Any) -> None:
    rows, res = mined
    t = pq.read_table(res.samples)
    assert t.num_rows == len(rows)  # keys are unique
    assert str(t.schema.field("level").type) == "int8"
    assert t.schema.names == ["query", "video_id", "text", "level", "source", "theta", "exposed_ever"]
    rep = res.report
    assert rep["per_source"]["p2_rec"] == 103  # 101 guitar + transformer/v3 + power transformer/v3
    assert rep["never_exposed_in_samples"]["p1_reformulation"] == 1  # v5 (v2 was exposed)
    assert (res.out / "report.md").is_file()


def test_rerun_skips_finished_steps_and_alpha_change_reruns_only_downstream(tmp_path: Path) -> None:
    rows1, res1 = _run(tmp_path)
    assert res1.steps_skipped == []
    rows2, res2 = _run(tmp_path)
    assert res2.steps_run == [] and rows2 == rows1
    rows3, res3 = _run(tmp_path, MineConfig(p3_n=5, p3_sampling="all", alpha=0.55))
    assert "sql" in res3.steps_skipped and "theta_score" in res3.steps_skipped
    assert "assemble" in res3.steps_run
    assert rows3[("transformer", "v7", None)]["source"] == "p1_reformulation"  # θ 0.6 > 0.55 now


def test_windows_and_cap_are_configurable(tmp_path: Path) -> None:
    cfg = MineConfig(reformulation_window_s=89.999, rec_cap_per_user=10, p3_n=0)
    rows, _ = _run(tmp_path, cfg)
    assert ("transformer", "v5", None) not in rows  # 90 s is outside an 89.999 s window
    p2_guitar = {k[1] for k, r in rows.items() if k[0] == "guitar" and r["source"] == "p2_rec"}
    assert p2_guitar == {f"g{i:03d}" for i in range(10)} | {"edge_in"}
    assert not any(r["source"] == "p3_llm" for r in rows.values())
