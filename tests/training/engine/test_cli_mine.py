"""`crops mine` bad input: one-line errors, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .handmade import build_logs


def _crops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crops", "mine", *args], capture_output=True, text=True, timeout=120)


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    r = _crops("--logs", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    logs = tmp_path / "logs"
    build_logs(logs)
    r = _crops("--logs", str(logs), "--out", str(tmp_path / "o"), "--engine", "flink")
    assert r.returncode == 2 and "duckdb or spark" in r.stderr
    r = _crops("--logs", str(logs), "--out", str(tmp_path / "o"), "--alpha", "1.5")
    assert r.returncode == 2 and "alpha" in r.stderr
    r = _crops("--logs", str(logs), "--out", str(tmp_path / "o"), "--llm-url", "localhost:1")
    assert r.returncode == 2 and "http" in r.stderr
    # a search log without the core.logs.SEARCH_LOG columns
    pq.write_table(pa.table({"query": ["a"], "video_id": ["v"]}), logs / "search_log.parquet")
    r = _crops("--logs", str(logs), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "lacks columns" in r.stderr and "Traceback" not in r.stderr
