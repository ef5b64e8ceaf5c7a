"""End to end through a real service: the world's users search over HTTP, feedback goes to
POST /feedback, `crops exposures` joins the service's logs and `crops mine` runs on them alone."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def _port() -> int:
    # the online tests' own range, so parallel engineers' servers never collide with these
    for port in range(18_550, 18_600):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18550-18599")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from world.build import build_world
    from world.config import tiny_config

    out = tmp_path_factory.mktemp("online") / "world"
    build_world(out, tiny_config(), seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def world_bundle(tmp_path_factory: pytest.TempPathFactory, model_bundle: Path, world: Path) -> Path:
    from index_builder.build import build_index

    out = tmp_path_factory.mktemp("online") / "bundle"
    shutil.copytree(model_bundle, out, dirs_exist_ok=True)
    build_index(out, world / "videos.parquet", progress=False, n_recall_queries=20)
    return out


class Served:
    """`crops serve` in a subprocess with two arms over the world bundle and JSONL logs."""

    def __init__(self, tmp: Path, bundle: Path) -> None:
        self.exposures = tmp / "exposures.jsonl"
        self.feedback = tmp / "feedback.jsonl"
        cfg = {"version": 1, "bundles": {"base": str(bundle)}, "defaults": {"bundle": "base"},
               "layers": [{"name": "model", "experiments": [{"name": "ab", "arms": {
                   "control": {"weight": 50}, "treatment": {"weight": 50}}}]}]}
        (tmp / "ab.json").write_text(json.dumps(cfg))
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CROPS_EXPOSURE_JSONL": str(self.exposures), "CROPS_FEEDBACK_JSONL": str(self.feedback),
               "CROPS_CACHE": "memory"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crops", "serve", "--experiments", str(tmp / "ab.json"), "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def __enter__(self) -> Served:
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else ""
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "service did not become ready"
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()  # graceful: the exposure and feedback writers flush on shutdown
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory: pytest.TempPathFactory, world: Path, world_bundle: Path) -> Iterator[dict]:
    from online.driver import run_online

    tmp = tmp_path_factory.mktemp("served")
    with Served(tmp, world_bundle) as srv:
        a = run_online(world, srv.url, tmp / "run_a", sessions=60, seed=3, concurrency=4, run_id="a",
                       progress=False)
        b = run_online(world, srv.url, tmp / "run_b", sessions=60, seed=3, concurrency=1, run_id="b",
                       progress=False)
    yield {"tmp": tmp, "a": a, "b": b, "srv": srv}


def test_runs_are_deterministic_whatever_the_concurrency(online_run: dict) -> None:
    tmp = online_run["tmp"]
    ta = pq.read_table(tmp / "run_a" / "requests.parquet").drop(["request_id", "session_id"]).to_pylist()
    tb = pq.read_table(tmp / "run_b" / "requests.parquet").drop(["request_id", "session_id"]).to_pylist()
    assert len(ta) >= 60 and ta == tb
    assert {r["arm"] for r in ta} == {"control", "treatment"}
    assert sum(r["clicks"] for r in ta) > 0 and any(r["step"] > 0 for r in ta)  # clicks and reformulations


def test_mine_runs_on_logs_from_the_service_only(online_run: dict, world: Path) -> None:
    tmp, srv = online_run["tmp"], online_run["srv"]
    logs = tmp / "logs"
    r = subprocess.run([sys.executable, "-m", "crops", "exposures", "--jsonl", str(srv.exposures),
                        "--feedback-jsonl", str(srv.feedback), "--out", str(logs)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    join = json.loads((logs / "join.json").read_text())
    n_requests = online_run["a"]["requests"] + online_run["b"]["requests"]
    assert join["exposure_records"] == n_requests
    assert join["dropped_total"] == 0, join
    assert join["requests_with_feedback"] == n_requests
    search = pq.read_table(logs / "search_log.parquet").to_pylist()
    clicked = sum(r["clicked"] for r in search)
    assert clicked == sum(x["clicks"] for x in pq.read_table(tmp / "run_a" / "requests.parquet").to_pylist()) * 2
    assert pq.read_table(logs / "rec_log.parquet").num_rows > 0
    out = tmp / "mined"
    r = subprocess.run([sys.executable, "-m", "crops", "mine", "--logs", str(logs), "--videos",
                        str(world / "videos.parquet"), "--labels", str(world / "truth" / "relevance.parquet"),
                        "--out", str(out), "--p3-n", "0", "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    sources = {s["source"] for s in samples}
    assert "p0_click" in sources and "exposed_unclicked" in sources, sources
    assert "p2_rec" in sources or "p1_reformulation" in sources, sources


def test_report_has_every_metric_with_cis(online_run: dict) -> None:
    from online.report import write_report
    from online.stats import METRICS

    run = online_run["tmp"] / "run_a"
    rep = write_report(run, "control", n_boot=200)
    assert set(rep["arms"]) == {"control", "treatment"}
    d = rep["deltas"]["treatment"]
    assert set(d) == set(METRICS)
    assert d["ctr"]["ci_low"] is not None and d["ctr"]["ci_low"] <= d["ctr"]["delta_rel"] <= d["ctr"]["ci_high"]
    assert (run / "report.png").stat().st_size > 0 and "sessions per arm" in (run / "report.md").read_text()


def test_an_arms_training_logs_are_the_world_history_plus_its_own_traffic(online_run: dict, world: Path) -> None:
    from online.loop import arm_logs

    tmp = online_run["tmp"]
    logs = tmp / "logs"
    if not (logs / "join.json").is_file():
        subprocess.run([sys.executable, "-m", "crops", "exposures", "--jsonl", str(online_run["srv"].exposures),
                        "--feedback-jsonl", str(online_run["srv"].feedback), "--out", str(logs)], check=True)
    dest = arm_logs(world, logs, "treatment", tmp / "arm_logs")
    joined = pq.read_table(logs / "search_log.parquet").to_pylist()
    own = sum(1 for r in joined if r["arm"] == "treatment")
    base = pq.read_metadata(world / "train" / "search_log.parquet").num_rows
    assert pq.read_metadata(dest / "search_log.parquet").num_rows == base + own
    assert (dest / "truth" / "queries.parquet").is_file()  # the simulated LLM finds the world's truth
