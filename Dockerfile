# syntax=docker/dockerfile:1.7
# CroPS retrieval images. Targets:
#   cpu      the service on CPU: onnxruntime + faiss-cpu, no torch        (docker build --target cpu .)
#   gpu      the service on GPU: onnxruntime-gpu + faiss-gpu, no torch    (docker build --target gpu .)
#   builder  one-shot bundle builder: export + index extras (torch CPU)   (docker build --target builder .)
# The serving images install only `.[serve]` and run as a non-root user; the bundle is mounted
# read-only at /bundle (docker run -v "$PWD/runs/default/bundle:/bundle:ro" -p 8000:8000 crops:cpu).

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- shared base
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
# TOKENIZERS_PARALLELISM is a thread switch, not a secret (DL3064 matches the word TOKEN).
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    TOKENIZERS_PARALLELISM=false \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 crops \
 && useradd --system --uid 10001 --gid crops --home-dir /home/crops --create-home --shell /usr/sbin/nologin crops

# ---------------------------------------------------------------- source only (keeps layers cacheable)
FROM base AS src
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY deploy/constraints-serve.txt ./deploy/constraints-serve.txt
COPY core ./core
COPY service ./service
COPY crops ./crops
COPY model_export ./model_export
COPY towers ./towers
COPY index_builder ./index_builder
COPY training ./training
COPY world ./world
COPY loadtest ./loadtest
COPY online ./online

# ---------------------------------------------------------------- CPU serving venv
FROM src AS venv-cpu
RUN python -m venv /opt/venv \
 && pip install -c constraints.txt -c deploy/constraints-serve.txt ".[serve]" \
 && python -c "import onnxruntime, faiss, service.app" \
 && ! python -c "import torch" 2>/dev/null

# ---------------------------------------------------------------- GPU serving venv
# Same service, GPU wheels: onnxruntime-gpu (CUDA execution provider) and faiss-gpu (CUDA 12, with
# Hopper kernels: faiss-gpu-cu12 has none and fails on an H100/H200); the
# CUDA runtime libraries come as pip wheels, the driver from the host (NVIDIA container toolkit).
FROM src AS venv-gpu
RUN python -m venv /opt/venv \
 && pip install -c constraints.txt -c deploy/constraints-serve.txt ".[serve]" \
 && pip uninstall -y onnxruntime faiss-cpu \
 && pip install "onnxruntime-gpu[cuda,cudnn]>=1.17" "faiss-gpu>=1.15.1" \
 && python -c "import onnxruntime, faiss, service.app" \
 && ! python -c "import torch" 2>/dev/null

# ---------------------------------------------------------------- serving runtime (shared by cpu and gpu)
FROM base AS runtime
WORKDIR /home/crops
# GLIBC_TUNABLES: the heap's large allocations (index, model) on transparent huge pages (service/heap.py).
ENV CROPS_BUNDLE=/bundle \
    PORT=8000 \
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/crops-metrics
EXPOSE 8000
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
ENTRYPOINT ["crops", "serve", "--host", "0.0.0.0"]
CMD ["--workers", "1"]

FROM runtime AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=venv-gpu /opt/venv /opt/venv

# ---------------------------------------------------------------- one-shot bundle builder
# Builds the default bundle (embedded catalog → ONNX export → index) into /bundles/default.
FROM src AS builder
RUN python -m venv /opt/venv \
 && pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install -c constraints.txt ".[serve,export,index,train]" \
 && mkdir -p /bundles \
 && chown crops:crops /bundles
COPY --chmod=0755 deploy/build-bundle.sh /usr/local/bin/crops-build-bundle
WORKDIR /home/crops
USER 10001:10001
ENV OUT=/bundles/default
ENTRYPOINT ["crops-build-bundle"]

# The default target (last stage): the CPU service.
FROM runtime AS cpu
COPY --from=venv-cpu /opt/venv /opt/venv
