"""The benchmark's in-process limit script on a real bundle (ONNX + faiss), briefly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_limit_script_measures_the_serving_path(tiny_bundle: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q.json"
    queries.write_text(json.dumps(["cat video", "pasta recipe", "minecraft speedrun", "guitar cover"]))
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "limit.py"),
            "--bundle",
            str(tiny_bundle),
            "--queries",
            str(queries),
            "--seconds",
            "1",
            "--cpus",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["processes"] == 1 and out["cpus"] == [0]
    assert out["rps"] > 0 and 0 < out["p50_ms"] <= out["p99_ms"]
    assert out["peak_rss_mib"] > 50  # a real model and index were loaded


def test_open_loop_search_bisects_to_the_slo(tiny_bundle: Path) -> None:
    """The bench's rate search against a real uvicorn server: with a loose SLO it climbs to a passing
    rate; with an impossible one no rate passes and best stays None."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    from tests.service.conftest import LiveServer

    bodies = [json.dumps({"query": f"cat video {i}", "top_k": 10}).encode() for i in range(50)]
    with LiveServer(bundle=tiny_bundle, cache="none") as srv:
        loose = bench._open_loop_search(srv.url, bodies, lo=0, hi=60, seconds=1.5, slo_ms=2000, name="t", steps=2)
        tight = bench._open_loop_search(srv.url, bodies, lo=0, hi=60, seconds=1.5, slo_ms=1e-3, name="t", steps=2)
    assert loose["best"] == 45.0 and [p["rate"] for p in loose["points"]] == [30, 45]
    assert all(p["within_slo"] and p["failures"] == 0 for p in loose["points"])
    assert tight["best"] is None and [p["rate"] for p in tight["points"]] == [30, 15]


def test_wait_ready_reports_a_server_that_exits() -> None:
    from loadtest.ready import NotReady, wait_ready

    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    try:
        wait_ready("http://127.0.0.1:9", proc, timeout=5)
    except NotReady as exc:
        assert "exited with 3" in str(exc)
    else:
        raise AssertionError("wait_ready returned for a dead server")


def test_service_row_pairs_limit_and_service_rounds_on_two_least_conn_workers(tiny_bundle: Path) -> None:
    """run_http_row against a real `crops serve --workers 2` (least-conn): the sweep finds its best SLO
    point and each paired round measures the service there right after the limit callback (a stand-in
    returning fixed numbers, so the ratio is checkable)."""
    import os
    import shutil

    import pytest

    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed (apt-get install wrk; .ci/run installs it)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    calls: list[int] = []

    def stand_in_limit() -> dict[str, float]:
        calls.append(1)
        return {"rps": 100.0, "p99_ms": 5.0}

    port = bench.free_port()
    env = {**os.environ, "CROPS_CACHE": "none"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "crops", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
           "--workers", "2"]
    bodies = [json.dumps({"query": f"cat video {i}", "top_k": 10}).encode() for i in range(50)]
    row = bench.run_http_row("service", cmd, env, port, bodies, seconds=1, slo_ms=1000, connections=(1, 2),
                             fixed_rate=None, pin=False, workers=2, paired_limit=stand_in_limit, paired_rounds=2)
    assert all(p["within_slo"] for p in row["sweep"])  # a 1 s SLO: every point passes
    assert row["paired"]["connections"] == row["best_within_slo"]["connections"]
    rounds = row["paired"]["rounds"]
    assert len(calls) == 2 and [r["round"] for r in rounds] == [0, 1]
    for r in rounds:
        assert r["service_rps"] > 0 and r["errors"] == 0
        assert r["ratio"] == round(r["service_rps"] / 100.0, 3)


def test_bench_report_renders_paired_rounds_from_the_published_json(tmp_path: Path) -> None:
    """docs/results/bench.json (a real 1M run where no point met the SLO) renders into the markdown report:
    the paired ratio, the per-round table, and no SLO claim for the service."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    result = json.loads((ROOT / "docs" / "results" / "bench.json").read_text())
    out = tmp_path / "report.md"
    bench.write_markdown(result, out, "python benchmarks/bench.py ...")
    md = out.read_text()
    rounds = result["paired_rounds"]
    assert len(rounds) >= 3
    assert f"service / limit = {result['service_over_limit_paired']:.3f}" in md
    assert "| round | limit req/s | service req/s |" in md
    assert md.count("\n| ") >= len(rounds)
    for r in rounds:
        assert f"| {r['round']} | {r['limit_rps']} | {r['service_rps']} |" in md
    # the published run: some paired rounds met the SLO, not most of them
    met = result["paired_rounds_within_slo"]
    assert not result["paired_within_slo"] and met
    assert f"in {met} of {len(rounds)} rounds" in md
    # the same run had no point met the SLO: the report must say so instead of quoting a ratio
    none = {**result, "paired_rounds_within_slo": 0, "service_rps": 0.0}
    bench.write_markdown(none, out, "python benchmarks/bench.py ...")
    md = out.read_text()
    assert "no point met the SLO" in md and "service / naive within the SLO: n/a" in md
    assert f"in {met} of {len(rounds)} rounds" not in md


def test_within_slo_counts_the_paired_rounds_only_when_most_met_the_slo() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    def rounds(*p99: float) -> list[dict[str, float]]:
        return [{"service_rps": 400.0 + i, "service_p99_ms": p, "errors": 0, "ratio": 0.8 + i / 100}
                for i, p in enumerate(p99)]

    sweep = {"max_rps_within_slo": 309.3, "max_rps_within_slo_open_loop": 0.0}
    most = {**sweep, "paired": {"within_slo_point": True, "rounds": rounds(9.0, 9.5, 12.0)}}
    assert bench.within_slo(most, 500.0, 10.0) == (401.0, 0.81, 2, True)
    # 1 of 5 rounds met it: the rounds do not count, the sweep's single passing point does
    few = {**sweep, "paired": {"within_slo_point": True, "rounds": rounds(11.8, 9.0, 12.0, 10.5, 12.6)}}
    assert bench.within_slo(few, 500.0, 10.0) == (309.3, 0.619, 1, False)
    # no sweep point met it: rounds at one connection per worker never count, even if they pass
    none = {"max_rps_within_slo": None, "paired": {"within_slo_point": False, "rounds": rounds(9.0, 9.0, 9.0)}}
    assert bench.within_slo(none, 500.0, 10.0) == (0.0, 0.0, 3, False)
