"""Torch side of the towers: a HF encoder + attention-mask mean pooling + L2 norm.

Checkpoint layout (what the trainer writes, what ``crops export --checkpoint`` reads):
- shared towers: one HF model folder (``config.json``, weights, ``tokenizer.json``);
- separate towers: a folder with ``query/`` and ``doc/`` sub-folders, each such a model folder.
An optional ``crops_checkpoint.json`` next to them records the training run; it goes into the
bundle manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CropsError, ErrorKind


class PooledEncoder(nn.Module):
    """Encoder whose forward returns unit-length mean-pooled embeddings."""

    def __init__(self, model_dir: Path | str) -> None:
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(str(model_dir))
        self.encoder.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=-1)


def resolve_checkpoint(checkpoint: Path | str) -> tuple[Path, Path | None, dict[str, Any]]:
    """(query tower dir, doc tower dir or None when shared, training metadata)."""
    root = Path(checkpoint)
    if not root.is_dir():
        raise CropsError(ErrorKind.NOT_FOUND, f"checkpoint {root} is not a folder")
    meta_path = root / "crops_checkpoint.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if (root / "query").is_dir():
        query, doc = root / "query", root / "doc"
        if not doc.is_dir():
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{root} has query/ but no doc/ tower")
        towers: tuple[Path, Path | None] = (query, doc)
    else:
        towers = (root, None)
    for tower in (t for t in towers if t is not None):
        if not (tower / "config.json").is_file():
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{tower} has no config.json: not a model folder")
        if not (tower / "tokenizer.json").is_file():
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{tower} has no tokenizer.json")
    return towers[0], towers[1], meta
