"""Index-builder fixtures: an IVF-PQ+refine bundle over clustered synthetic vectors (no encoding cost)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


def clustered(n: int, dim: int = 384, *, centers: int = 40, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres: MiniLM-like clustered geometry, cheap to make."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + spread * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def ivf_data() -> tuple[np.ndarray, np.ndarray]:
    """(4 000 doc vectors, 120 held-out query vectors near them)."""
    docs = clustered(4000, seed=1)
    rng = np.random.default_rng(2)
    q = docs[rng.choice(len(docs), 120, replace=False)] + 0.5 * rng.normal(size=(120, 384)).astype(np.float32)
    return docs, q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def ivf_bundle(tmp_path_factory: pytest.TempPathFactory, model_bundle: Path,
               ivf_data: tuple[np.ndarray, np.ndarray]) -> Path:
    """The production recipe (IVF-PQ + RFlat, tuned to recall 0.95) over synthetic vectors. Read-only."""
    from index_builder.build import build_from_vectors

    out = tmp_path_factory.mktemp("bundles") / "ivfpq"
    shutil.copytree(model_bundle, out, dirs_exist_ok=True)
    docs, q = ivf_data
    build_from_vectors(out, docs, [f"s{i:05d}" for i in range(len(docs))], q, ann=True, n_latency=20,
                       use_gpu=False, corpus="synthetic")
    return out
