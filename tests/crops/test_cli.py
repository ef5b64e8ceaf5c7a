"""The CLI reports bad input in one line (exit 2), never with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _crops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crops", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_stage_commands() -> None:
    out = _crops("--help")
    assert out.returncode == 0
    for cmd in ("export", "index", "serve", "eval"):
        assert cmd in out.stdout


def test_missing_corpus_is_one_line(tmp_path: Path, model_bundle: Path) -> None:
    out = _crops("index", "build", "--bundle", str(model_bundle), "--corpus", str(tmp_path / "nope.jsonl"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: corpus")
    assert "Traceback" not in out.stderr


def test_not_a_bundle_is_one_line(tmp_path: Path, tiny_corpus: Path) -> None:
    out = _crops("index", "build", "--bundle", str(tmp_path), "--corpus", str(tiny_corpus))
    assert out.returncode == 2
    assert "not a bundle" in out.stderr and "Traceback" not in out.stderr


def test_eval_on_a_folder_that_is_not_beir(tmp_path: Path) -> None:
    out = _crops("eval", "beir", "--data", str(tmp_path), "--json")
    assert out.returncode == 2 and "error:" in out.stderr and "Traceback" not in out.stderr


def test_a_bad_setting_in_the_environment_is_one_line(tiny_bundle: Path) -> None:
    import os

    env = {**os.environ, "CROPS_CACHE_SIZE": "0"}
    r = subprocess.run([sys.executable, "-m", "crops", "serve", "--bundle", str(tiny_bundle), "--port", "1"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: invalid CROPS_CACHE_SIZE='0'")
