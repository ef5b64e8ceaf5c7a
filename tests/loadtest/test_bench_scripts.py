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
