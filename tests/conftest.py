"""Shared fixtures: a real (tiny) bundle built once per session with the real exporter and builder."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_TOPICS = {
    "cats": ["cat", "kitten", "cats playing", "funny cat", "cat compilation"],
    "cooking": ["pasta recipe", "how to cook rice", "easy dinner", "baking bread", "street food"],
    "gaming": ["minecraft build", "speedrun", "fortnite clip", "retro games", "game review"],
    "music": ["guitar cover", "piano tutorial", "lofi beats", "concert live", "drum solo"],
    "power": ["power transformer", "substation tour", "electrician tips", "voltage explained", "wiring"],
    "ml": ["transformer neural network", "attention explained", "deep learning", "gpt tutorial", "python ml"],
}


def write_tiny_corpus(path: Path, n: int = 600, seed: int = 0) -> list[dict[str, str]]:
    """A small generated short-video corpus (jsonl, BEIR-style fields)."""
    rng = random.Random(seed)
    rows = []
    topics = list(_TOPICS)
    for i in range(n):
        topic = topics[i % len(topics)]
        a, b = rng.sample(_TOPICS[topic], 2)
        rows.append({"_id": f"v{i:05d}", "title": f"{a} {rng.randint(1, 99)}", "text": f"{b} video #{topic}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="session")
def model_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained MiniLM exported to ONNX (no index yet). Read-only for tests: copy to modify."""
    from model_export.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "model"
    export_bundle(out, max_query_tokens=32, max_doc_tokens=64)
    return out


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_tiny_corpus(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, model_bundle: Path, tiny_corpus: Path) -> Path:
    """A complete bundle (model + Flat index over the tiny corpus). Read-only: copy to modify."""
    import shutil

    from index_builder.build import build_index

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    shutil.copytree(model_bundle, out, dirs_exist_ok=True)
    build_index(out, tiny_corpus, progress=False, n_recall_queries=50)
    return out


@pytest.fixture()
def bundle_copy(tmp_path: Path, tiny_bundle: Path) -> Path:
    """A private, writable copy of ``tiny_bundle``."""
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    return out
