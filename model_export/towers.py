"""Torch side of the towers: a HF encoder + attention-mask mean pooling + L2 norm.

Checkpoint layout (what the trainer writes, what ``crops export --checkpoint`` reads):
- shared towers: one HF model folder (``config.json``, weights, ``tokenizer.json``);
- separate towers: a folder with ``query/`` and ``doc/`` sub-folders, each such a model folder.
- adapter recipe: ``crops_adapter.json`` (base model folder, shared or not) + ``adapter.pt`` (one
  linear map per tower applied to the frozen model's unit-length pooled embedding, then L2 norm).
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

Adapter = dict[str, torch.Tensor]
"""State of an ``nn.Linear(dim, dim)`` applied after pooling (the adapter recipe)."""


class PooledEncoder(nn.Module):
    """Encoder whose forward returns unit-length mean-pooled embeddings (through ``adapter`` when
    given: normalise(adapter(normalise(pooled))), exactly the trainer's adapter recipe)."""

    def __init__(self, model_dir: Path | str, adapter: Adapter | None = None) -> None:
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(str(model_dir))
        self.encoder.eval()
        self.adapter: nn.Linear | None = None
        if adapter is not None:
            out_dim, in_dim = adapter["weight"].shape
            self.adapter = nn.Linear(in_dim, out_dim)
            self.adapter.load_state_dict(adapter)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        emb = nn.functional.normalize(pooled, p=2.0, dim=-1)
        if self.adapter is not None:
            emb = nn.functional.normalize(self.adapter(emb), p=2.0, dim=-1)
        return emb


def load_adapters(checkpoint: Path | str) -> tuple[Adapter, Adapter | None] | None:
    """(query adapter, doc adapter or None when shared) of an adapter-recipe checkpoint, else None."""
    root = Path(checkpoint)
    if not (root / "crops_adapter.json").is_file():
        return None
    if not (root / "adapter.pt").is_file():
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{root} has crops_adapter.json but no adapter.pt")
    info = json.loads((root / "crops_adapter.json").read_text())
    state = torch.load(root / "adapter.pt", map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "q" not in state or "d" not in state:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{root}/adapter.pt holds no q/d adapter states")
    return state["q"], None if info.get("shared_towers") else state["d"]


def resolve_checkpoint(checkpoint: Path | str) -> tuple[Path, Path | None, dict[str, Any]]:
    """(query tower dir, doc tower dir or None when shared, training metadata)."""
    root = Path(checkpoint)
    if not root.is_dir():
        raise CropsError(ErrorKind.NOT_FOUND, f"checkpoint {root} is not a folder")
    meta_path = root / "crops_checkpoint.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if (root / "crops_adapter.json").is_file():  # adapter recipe: both towers are the frozen base model
        meta = json.loads((root / "crops_adapter.json").read_text())
        base = Path(str(meta.get("base_model", "")))
        if not (base / "config.json").is_file():
            raise CropsError(
                ErrorKind.NOT_FOUND, f"{root}: the adapter's base model {base} is not a model folder here"
            )
        shared = bool(meta.get("shared_towers"))
        return base, (None if shared else base), meta
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
