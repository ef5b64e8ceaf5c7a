"""Reading the checkpoint layout declared in ``core.checkpoint`` (training writes it, export reads it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import (
    ADAPTER_META,
    ADAPTER_WEIGHTS,
    CHECKPOINT_META,
    CHECKPOINT_SCHEMA_VERSION,
    DOC_TOWER,
    META_SCHEMA_VERSION,
    MODEL_CONFIG,
    QUERY_TOWER,
    TOKENIZER_FILE,
)
from core.errors import CropsError, ErrorKind
from towers.encoder import Adapter


def load_adapters(checkpoint: Path | str) -> tuple[Adapter, Adapter | None] | None:
    """(query adapter, doc adapter or None when shared) of an adapter-recipe checkpoint, else None."""
    root = Path(checkpoint)
    if not (root / ADAPTER_META).is_file():
        return None
    if not (root / ADAPTER_WEIGHTS).is_file():
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{root} has {ADAPTER_META} but no {ADAPTER_WEIGHTS}")
    info = json.loads((root / ADAPTER_META).read_text())
    state = torch.load(root / ADAPTER_WEIGHTS, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "q" not in state or "d" not in state:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{root}/{ADAPTER_WEIGHTS} holds no q/d adapter states")
    return state["q"], None if info.get("shared_towers") else state["d"]


def _check_version(root: Path, meta: dict[str, Any]) -> None:
    version = int(meta.get(META_SCHEMA_VERSION, 1))
    if version > CHECKPOINT_SCHEMA_VERSION:
        raise CropsError(
            ErrorKind.INCOMPATIBLE,
            f"{root}: checkpoint layout version {version} is newer than this code's {CHECKPOINT_SCHEMA_VERSION}",
        )


def resolve_checkpoint(checkpoint: Path | str) -> tuple[Path, Path | None, dict[str, Any]]:
    """(query tower dir, doc tower dir or None when shared, training metadata)."""
    root = Path(checkpoint)
    if not root.is_dir():
        raise CropsError(ErrorKind.NOT_FOUND, f"checkpoint {root} is not a folder")
    meta_path = root / CHECKPOINT_META
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if (root / ADAPTER_META).is_file():  # adapter recipe: both towers are the frozen base model
        meta = json.loads((root / ADAPTER_META).read_text())
        base = Path(str(meta.get("base_model", "")))
        if not (base / MODEL_CONFIG).is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{root}: the adapter's base model {base} is not a model folder here")
        _check_version(root, meta)
        shared = bool(meta.get("shared_towers"))
        return base, (None if shared else base), meta
    _check_version(root, meta)
    if (root / QUERY_TOWER).is_dir():
        query, doc = root / QUERY_TOWER, root / DOC_TOWER
        if not doc.is_dir():
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{root} has {QUERY_TOWER}/ but no {DOC_TOWER}/ tower")
        towers: tuple[Path, Path | None] = (query, doc)
    else:
        towers = (root, None)
    for tower in (t for t in towers if t is not None):
        if not (tower / MODEL_CONFIG).is_file():
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{tower} has no {MODEL_CONFIG}: not a model folder")
        if not (tower / TOKENIZER_FILE).is_file():
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{tower} has no {TOKENIZER_FILE}")
    return towers[0], towers[1], meta
