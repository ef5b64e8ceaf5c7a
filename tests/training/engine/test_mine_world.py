"""End to end on a small simulated world: `crops mine` with the real θ (MiniLM) and the world's
simulated LLM, then a resumed rerun with another α that reuses every upstream step."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.samples import LEVELS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from world.build import build_world
    from world.config import tiny_config

    out = tmp_path_factory.mktemp("world")
    cfg = tiny_config(**{"n_requests": 1200, "catalog.n_videos": 500, "users.n_users": 150})
    build_world(out, cfg, seed=3, progress=False)
    return out


def test_mine_on_a_world_then_resume_with_another_alpha(world: Path, tmp_path: Path) -> None:
    from crops.cli import app

    out = tmp_path / "mined"
    args = ["mine", "--logs", str(world / "train"), "--out", str(out), "--no-progress", "--threads", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    t = pq.read_table(out / "samples.parquet")
    assert t.schema.names == ["query", "video_id", "text", "level", "source", "theta", "exposed_ever"]
    rows = t.to_pylist()
    assert all(r["level"] == LEVELS[r["source"]] for r in rows)
    assert len({(r["query"], r["video_id"], r["text"]) for r in rows}) == len(rows)
    for r in rows:
        if r["source"] in ("p1_reformulation", "p2_rec"):
            assert r["theta"] is not None and r["theta"] > 0.6
        if r["source"] == "p3_llm":
            assert r["video_id"] is None and r["text"] and r["theta"] >= 0.6
        else:
            assert r["video_id"] is not None and r["text"] is None
    rep = json.loads((out / "report.json").read_text())
    assert {"P1", "P2", "P3"} <= set(rep["alpha_sweep"])
    # P3 precision against the world's truth: each description graded for its query's true need
    p3 = rep["perspectives"]["P3"]
    assert all("by_grade" in x for x in rep["alpha_sweep"]["P3"] if x["kept"])
    assert 0.0 < p3["truly_fitting_rate_before_theta"] < 1.0
    assert abs(sum(p3["grade_mix_before_theta"].values()) - 1.0) < 1e-9
    assert 0.0 < p3["fits_llm_reading_rate_before_theta"] <= 1.0
    assert "graded against the query's true need" in (out / "report.md").read_text()
    for name, sweep in rep["alpha_sweep"].items():
        kept = [x["kept"] for x in sweep]
        assert kept == sorted(kept, reverse=True), name  # a higher α never keeps more
    th = rep["theta"]
    assert 0.0 <= th["ece_test"] <= 1.0 and th["auc_test"] > 0.6
    assert rep["never_exposed_in_samples"]["p2_rec"] == sum(
        1 for r in rows if r["source"] == "p2_rec" and r["exposed_ever"] is False
    )
    assert (out / "alpha_sweep.png").stat().st_size > 0 and (out / "report.md").is_file()

    r2 = CliRunner().invoke(app, [*args, "--alpha", "0.8"])
    assert r2.exit_code == 0, r2.output
    assert "skipped: sql, theta_fit, theta_score" in r2.output
    rows2 = pq.read_table(out / "samples.parquet").to_pylist()
    n_added = sum(r["source"] in ("p1_reformulation", "p2_rec", "p3_llm") for r in rows)
    n_added2 = sum(r["source"] in ("p1_reformulation", "p2_rec", "p3_llm") for r in rows2)
    assert n_added2 <= n_added
    assert all(r["theta"] > 0.8 for r in rows2 if r["source"] in ("p1_reformulation", "p2_rec"))
