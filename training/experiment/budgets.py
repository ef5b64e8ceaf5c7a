"""Budgets: the same recipe for every method, sized for CI, the 2-core box, or a GPU.

CPU budgets use the adapter recipe (frozen MiniLM, cached pooled embeddings, one trainable linear
map per tower): on 2 shared cores a step costs milliseconds, so 8 trained methods × 3 seeds fit.
The ``gpu`` budget fine-tunes the whole encoder (every layer, token ids in, no cache).
"""

from __future__ import annotations

from training.trainer.config import TrainConfig

_ADAPTER = {
    "adapter": True,
    "shared_towers": False,
    "lr": 1e-3,
    "temperature": 0.05,
    "weight_decay": 0.0,
    "max_query_tokens": 16,
    "max_doc_tokens": 32,
}

BUDGETS: dict[str, dict[str, object]] = {
    "tiny": {
        **_ADAPTER,
        "steps": 60,
        "batch_queries": 32,
        "docs_per_query": 8,
        "ance_refresh": 20,
        "warmup_steps": 5,
    },
    "small": {**_ADAPTER, "steps": 400, "batch_queries": 64, "docs_per_query": 8, "ance_refresh": 100},
    "full": {**_ADAPTER, "steps": 2000, "batch_queries": 128, "docs_per_query": 8, "ance_refresh": 250},
    "gpu": {
        "adapter": False,
        "n_train_layers": 0,
        "shared_towers": True,
        "lr": 3e-5,
        "temperature": 0.05,
        "steps": 300,
        "batch_queries": 128,
        "docs_per_query": 8,
        "ance_refresh": 100,
        "warmup_steps": 30,
        "max_query_tokens": 16,
        "max_doc_tokens": 48,
        "device": "cuda",
    },
}


def config_for(budget: str, **overrides: object) -> TrainConfig:
    from core.errors import CropsError, ErrorKind

    if budget not in BUDGETS:
        raise CropsError(
            ErrorKind.INVALID_INPUT, f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}"
        )
    values = {**BUDGETS[budget], "checkpoint_every": 10**9, **overrides}
    return TrainConfig(**values)  # type: ignore[arg-type]
