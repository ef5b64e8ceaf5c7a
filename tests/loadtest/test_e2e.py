"""The load-test tools against a real service (``crops serve`` subprocess, two A/B arms, real bundle)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.openloop import closed_loop, open_loop
from loadtest.querymix import default_mix
from loadtest.ready import NotReady, wait_ready
from loadtest.report import run_stats

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ab_service(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[str]:
    """`crops serve` with an A/B config: two arms (same bundle) split 50/50 by user id."""
    cfg = tmp_path_factory.mktemp("ab") / "experiments.yaml"
    cfg.write_text(
        json.dumps(
            {
                "version": 1,
                "bundles": {"base": str(tiny_bundle), "alt": str(tiny_bundle)},
                "defaults": {"bundle": "base"},
                "layers": [
                    {
                        "name": "model",
                        "experiments": [
                            {
                                "name": "lt",
                                "buckets": [0, 10000],
                                "arms": {"control": {"weight": 50}, "treatment": {"weight": 50, "bundle": "alt"}},
                            }
                        ],
                    }
                ],
            }
        )
    )
    port = _free_port()
    # The service's own default deadline: a /retrieve/batch is one admission unit, so a batch of 4 is
    # not shed for having four items (it once was, and this test caught it).
    env = {**os.environ, "CROPS_CACHE": "memory", "OMP_NUM_THREADS": "1"}
    env.pop("CROPS_REDIS_URL", None)
    log = cfg.parent / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crops", "serve", "--experiments", str(cfg), "--port", str(port)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, proc)
        except NotReady as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-2000:]}") from exc
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _loadtest(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "loadtest.run",
        "--host",
        url,
        "--rate",
        "30",
        "--duration",
        "5",
        "--ramp",
        "1",
        "--batch-share",
        "0.2",
        "--batch-size",
        "4",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def test_runner_holds_the_rate_splits_arms_and_writes_the_report(ab_service: str, tmp_path: Path) -> None:
    res = _loadtest(ab_service, tmp_path, "--slo-p99-ms", "5000", "--min-rate-share", "0.7")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SLO met" in res.stdout
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["overall"]["failures"] == 0, s["failures"]
    assert s["by_endpoint"]["/retrieve/batch"]["count"] > 0
    arms = s["by_arm"]
    assert set(arms) == {"control", "treatment"}, arms
    total = sum(a["count"] for a in arms.values())
    assert all(a["count"] / total > 0.25 for a in arms.values()), arms  # user ids split the traffic
    assert set(s["by_bucket"]) <= {"head", "torso", "tail"} and "head" in s["by_bucket"]
    assert (tmp_path / "latency.png").stat().st_size > 10_000
    assert "## /retrieve by arm" in (tmp_path / "report.md").read_text()


def test_runner_exits_1_when_the_slo_is_missed(ab_service: str, tmp_path: Path) -> None:
    res = _loadtest(ab_service, tmp_path, "--slo-p99-ms", "0.001")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "SLO missed" in res.stdout and "p99" in res.stdout
    assert "MISSED" in (tmp_path / "report.md").read_text()


def test_runner_unreachable_service_is_a_usage_error(tmp_path: Path) -> None:
    res = _loadtest(f"http://127.0.0.1:{_free_port()}", tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: service not reachable")


def test_open_loop_holds_a_fixed_rate(ab_service: str) -> None:
    bodies = default_mix().request_bodies(100)
    samples = open_loop(ab_service, bodies, rate=40, duration=2)
    assert len(samples) == 80
    assert all(s.ok for s in samples), [s.error for s in samples if not s.ok][:3]
    assert {s.arm for s in samples} == {"control", "treatment"}
    # scheduled send times are 25 ms apart whatever the latency (open loop)
    assert samples[-1].t == pytest.approx(79 / 40, abs=1e-6)


def test_closed_loop_measures_the_service(ab_service: str) -> None:
    samples = closed_loop(ab_service, default_mix().request_bodies(50), connections=2, duration=2)
    res = run_stats(samples, 2.0)
    assert res["requests"] > 0 and res["failures"] == 0, [s.error for s in samples if not s.ok][:3]
    assert 0 < res["p50_ms"] <= res["p99_ms"] and res["rps"] == res["requests"] / 2.0
    assert {s.arm for s in samples} == {"control", "treatment"}


def test_locustfile_runs_standalone_headless(ab_service: str, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtest" / "locustfile.py"),
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "-t",
        "3s",
        "--host",
        ab_service,
        "--crops-rate",
        "10",
        "--crops-batch-share",
        "0.3",
        "--csv",
        str(tmp_path / "lt"),
        "--only-summary",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    stats = (tmp_path / "lt_stats.csv").read_text()
    assert "/retrieve," in stats and "/retrieve/batch," in stats
