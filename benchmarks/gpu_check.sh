#!/usr/bin/env bash
# GPU path check: one script, run on a CUDA machine with the project importable (PYTHONPATH or
# `pip install -e .[train,export,index,dev]`). Writes results under ${OUT:-/tmp/crops-gpu-check}.
#   1. environment: GPU, torch CUDA, onnxruntime providers, faiss GPU support, CUDA 12 libraries
#   2. full fine-tuning on CUDA (benchmarks/gpu_check.py: tiny world → mine → 4 methods)
#   3. H-InfoNCE vs InfoNCE loss step on CUDA (benchmarks/loss_bench.py)
#   4. doc-tower encoding throughput with torch on CUDA vs the CPU
set -uo pipefail
OUT=${OUT:-/tmp/crops-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 - <<'PY' | tee -a "$OUT/env.txt"
import glob, torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.version.cuda)
print("onnxruntime", ort.__version__, ort.get_available_providers())
try:
    import faiss
    print("faiss", faiss.__version__, "gpus", getattr(faiss, "get_num_gpus", lambda: 0)())
except Exception as exc:
    print("faiss unavailable:", exc)
libs = sorted(set(p.rsplit("/", 1)[-1] for p in glob.glob("/usr/**/libcublas.so*", recursive=True)))
print("cuBLAS libraries on the machine:", libs or "none found")
PY
echo "== full fine-tuning on CUDA"
timeout 330 python3 -m benchmarks.gpu_check --out "$OUT/ft" --steps "${STEPS:-150}" \
  > "$OUT/gpu_train.json" 2> "$OUT/gpu_train.log"; echo "exit $?"; tail -c 4000 "$OUT/gpu_train.json"
tail -5 "$OUT/gpu_train.log"
echo "== loss benchmark on CUDA"
timeout 60 python3 -m benchmarks.loss_bench --repeats 30 --out "$OUT/loss_bench_gpu.md" 2>&1 | tail -12
echo "== doc-tower encoding throughput, torch CUDA vs CPU"
timeout 90 python3 - <<'PY' 2>&1 | tee "$OUT/encode.txt"
import json, time, tempfile, torch
from pathlib import Path
from training.encoder import TextEncoder
from world.catalog import build_catalog_file
path = Path(tempfile.mkdtemp()) / "catalog.jsonl"
build_catalog_file(path, n_videos=20_000, progress=False)
texts = [(r["title"] + " " + r["text"]) for r in map(json.loads, path.read_text().splitlines())]
for device, n in (("cuda", len(texts)), ("cpu", 2000)):
    torch.set_num_threads(2)
    enc = TextEncoder(max_length=64).to(device)
    enc.encode(texts[:256], batch_size=256)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    enc.encode(texts[:n], batch_size=512 if device == "cuda" else 64)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"{device}: {n} docs in {dt:.2f} s = {n / dt:,.0f} docs/s (max 64 tokens, 2 CPU threads on cpu)")
PY
