"""The GPU path (run on a CUDA machine: pytest -m gpu tests/service): CUDA encoder behind the live API."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.onnx_encoder import available_providers
from tests.service.conftest import LiveServer

CUDA = "CUDAExecutionProvider" in available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="onnxruntime has no CUDA execution provider: GPU serving path not exercised")
def test_service_serves_from_the_gpu_with_cpu_equal_results(tiny_bundle: Path) -> None:
    queries = ["funny cat compilation", "how to cook rice", "minecraft build", "piano tutorial"]
    with LiveServer(bundle=tiny_bundle, use_gpu=False, cache="none") as cpu:
        want = [cpu.retrieve(q, top_k=10).json() for q in queries]
    with LiveServer(bundle=tiny_bundle, use_gpu=True, cache="none", max_batch=64, admin_token="t") as gpu:
        info = gpu.client.get("/info", headers={"x-crops-admin-token": "t"}).json()["bundles"]["default"]
        assert info["providers"][0] == "CUDAExecutionProvider", info
        got = [gpu.retrieve(q, top_k=10).json() for q in queries]
        # micro-batching on the GPU: one batch of 32 concurrent queries still answers each one
        r = gpu.client.post("/retrieve/batch", json={"items": [{"query": f"cat {i}", "top_k": 5} for i in range(32)]})
        assert r.status_code == 200 and len(r.json()["results"]) == 32
        print("gpu timings", [g["timings"] for g in got])
    for w, g in zip(want, got, strict=True):
        overlap = len({c["video_id"] for c in w["candidates"]} & {c["video_id"] for c in g["candidates"]})
        assert overlap >= 9, (w, g)
