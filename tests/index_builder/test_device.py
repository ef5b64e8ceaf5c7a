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


def _fatbin(entries: list[tuple[int, int, bytes]]) -> bytearray:
    """A fatbin as nvcc lays it out: a 16-byte header, then entries (kind, arch, payload), each with a
    64-byte header whose arch field is at byte 28."""
    import struct

    body = b""
    for kind, arch, payload in entries:
        head = bytearray(64)
        struct.pack_into("<HHIQ", head, 0, kind, 0x101, 64, len(payload))
        struct.pack_into("<I", head, 28, arch)
        body += bytes(head) + payload
    return bytearray(struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body)


def test_gpu_pack_keeps_only_the_gpus_kernels() -> None:
    """The faiss-gpu packer zeroes every payload but the sm_90 SASS, keeps all headers, and refuses a
    fatbin without that architecture (the GPU would then have no kernel to run)."""
    from benchmarks.gpu_pack import keep_arch

    ptx90, sass80, sass90 = b"P" * 24, b"8" * 40, b"9" * 32
    blob = bytearray(8) + _fatbin([(2, 80, sass80), (1, 90, ptx90), (2, 90, sass90)])  # 8 bytes of padding first
    before = bytes(blob)
    seen = keep_arch(blob, 90)
    assert seen == {("sass", 80): 1, ("ptx", 90): 1, ("sass", 90): 1}
    assert len(blob) == len(before) and sass90 in blob
    assert sass80 not in blob and ptx90 not in blob
    assert blob.count(b"\xba\x55\xed\x50"[::-1]) == 1  # the fatbin header is intact
    with pytest.raises(ValueError, match="no sm_90 kernels"):
        keep_arch(bytearray(before[:8]) + _fatbin([(2, 80, sass80)]), 90)


def test_gpu_pack_finds_the_fatbin_section_or_says_why() -> None:
    import sys

    from benchmarks.gpu_pack import fatbin_section

    with pytest.raises(ValueError, match="not a 64-bit"):
        fatbin_section(b"#!/bin/sh\n")
    with pytest.raises(ValueError, match=r"no \.nv_fatbin section"):  # a real ELF file without GPU code
        fatbin_section(Path(sys.executable).resolve().read_bytes())


def test_gpu_buildability_is_known_before_any_work() -> None:
    """faiss GPU builds IVF-PQ with 8-bit codes only (seen on an H200: 'GPU: only pq.nbits == 8 is
    supported'); the default below PQ8_MIN_VECTORS has 4-bit codes, so `--device cuda` refuses it by
    name, and indexes without an IVF part are CPU builds anywhere."""
    from core.errors import CropsError
    from index_builder.faiss_utils import PQ8_MIN_VECTORS, production_factory
    from index_builder.ops import gpu_unsupported, require_gpu_buildable

    small = production_factory(PQ8_MIN_VECTORS - 1, 384)
    assert "PQ48x4" in small
    reason = gpu_unsupported(small, 384)
    assert reason is not None and "8-bit codes only" in reason and small in reason
    with pytest.raises(CropsError, match="--device cuda: faiss GPU builds IVF-PQ with 8-bit codes only"):
        require_gpu_buildable(small, 384)
    for ok in (production_factory(PQ8_MIN_VECTORS, 384), "IVF16,PQ48,RFlat", "HNSW32,SQ8", "Flat"):
        assert gpu_unsupported(ok, 384) is None, ok
        require_gpu_buildable(ok, 384)


def test_gpu_pack_parts_fit_one_transfer_and_join_back(tmp_path: Path) -> None:
    """Files are spread over parts of at most the part size; a file larger than a part is cut into
    NAME.part.000, ... that concatenate to the original; every part lists its files' checksums."""
    import hashlib

    from benchmarks.gpu_pack import split_into_parts

    src = tmp_path / "src"
    src.mkdir()
    blobs = {"big.tar.xz": bytes(range(256)) * 10, "a.whl": b"a" * 700, "b.whl": b"b" * 300, "c.npy": b"c" * 200}
    for name, data in blobs.items():
        (src / name).write_bytes(data)
    parts = split_into_parts(sorted(src.iterdir()), tmp_path / "out", 1000)
    assert not any(src.iterdir())
    files = {p.name: p for d in parts for p in d.iterdir() if not p.name.startswith("SHA256SUMS")}
    assert all(sum(p.stat().st_size for p in d.iterdir() if not p.name.startswith("SHA256SUMS")) <= 1000
               for d in parts)
    big = b"".join(files[n].read_bytes() for n in sorted(n for n in files if n.startswith("big.tar.xz.part.")))
    assert big == blobs["big.tar.xz"] and "big.tar.xz" not in files
    assert all(files[n].read_bytes() == blobs[n] for n in ("a.whl", "b.whl", "c.npy"))
    for n, d in enumerate(parts, 1):
        for line in (d / f"SHA256SUMS.{n}").read_text().splitlines():
            digest, name = line.split("  ")
            assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest


def test_gpu_pack_bad_arguments_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.gpu_pack import main

    for argv in (["--part-mib", "0"], ["--part-mib", "100"], ["--arch", "0"]):
        assert main([*argv, "--out", str(tmp_path / "g")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --part-mib must be"), err
    assert not (tmp_path / "g").exists()  # nothing written before the check
