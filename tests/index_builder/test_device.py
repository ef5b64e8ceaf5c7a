"""`--device cuda` on a host without faiss GPU, and the GPU build benchmark's CPU path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from index_builder.faiss_utils import gpu_count

no_gpu = pytest.mark.skipif(gpu_count() > 0, reason="faiss sees a GPU: the no-GPU error path cannot happen")


@no_gpu
def test_device_cuda_without_gpu_is_one_error_line_before_any_work(
    model_bundle: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    bundle = tmp_path / "b"
    shutil.copytree(model_bundle, bundle)
    r = subprocess.run([sys.executable, "-m", "crops", "index", "build", "--bundle", str(bundle), "--corpus",
                        str(tiny_corpus), "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]  # other lines: INFO logs
    assert errors == [ln for ln in errors if ln.startswith("error: --device cuda: faiss sees no GPU")], r.stderr
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert not (bundle / "index.faiss").exists()


def test_device_flag_values() -> None:
    from core.errors import CropsError
    from crops.cmd_index import _device_flag

    assert _device_flag("cuda") is True and _device_flag("cpu") is False and _device_flag("auto") is None
    assert _device_flag("auto", gpu="off") is False  # the older --gpu spelling still works
    with pytest.raises(CropsError, match="--device must be"):
        _device_flag("tpu")


def test_gpu_benchmark_script_cpu_path(tmp_path: Path) -> None:
    """The script the GPU machine runs, on CPU with a small n: timings, tuned point, recall written."""
    from benchmarks import gpu_index_build as mod
    out = tmp_path / "r.json"
    rc = mod.main(["--device", "cpu", "--n", "3000", "--n-queries", "60", "--factory", "IVF16,PQ16x4,RFlat",
                   "--target-recall", "0.9", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    row = r["builds"]["cpu"]
    assert r["n"] == 3000 and r["tuned_on"] == "cpu" and row["built_on"] == "cpu"
    assert row["train_s"] > 0 and row["add_s"] > 0
    assert 0.0 <= row["recall_at_100"] <= 1.0 and row["recall_by_nprobe"]
    if gpu_count() == 0:
        assert mod.main(["--device", "cuda", "--n", "100", "--out", str(tmp_path / "x.json")]) == 2
