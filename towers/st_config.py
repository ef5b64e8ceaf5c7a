"""Reading a sentence-transformers model folder's module list (no torch needed)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.checkpoint import ST_MODULES
from core.errors import CropsError, ErrorKind

log = logging.getLogger(__name__)

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "lasttoken")
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken",
}
_ACTIVATIONS = ("Tanh", "Identity", "ReLU", "GELU", "Sigmoid")


@dataclass(frozen=True)
class DenseSpec:
    """One ``sentence_transformers.models.Dense`` module: a linear map and an activation."""

    path: str  # sub-folder holding config.json + weights
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a name in _ACTIVATIONS


@dataclass(frozen=True)
class StConfig:
    """Pooling → Dense* → Normalize after the transformer, as the folder's modules.json declares."""

    pooling: tuple[str, ...] = ("mean",)
    dense: tuple[DenseSpec, ...] = field(default_factory=tuple)
    normalize: bool = True
    declared: bool = True  # False: the folder has no modules.json and the defaults were assumed

    @property
    def pooling_name(self) -> str:
        return "+".join(self.pooling)


def _pooling_modes(cfg: dict[str, Any], where: Path) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        modes: tuple[str, ...] = (mode,)
    elif isinstance(mode, list):
        modes = tuple(str(m) for m in mode)
    else:
        modes = tuple(name for key, name in LEGACY_POOLING_KEYS.items() if cfg.get(key))
        if cfg.get("pooling_mode_weightedmean_tokens"):
            modes += ("weightedmean",)
    if not modes:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{where}: no pooling mode is switched on")
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported:
        raise CropsError(
            ErrorKind.BUNDLE_INVALID, f"{where}: pooling {unsupported} is not supported (supported: {POOLING_MODES})"
        )
    if cfg.get("include_prompt") is False:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{where}: pooling that excludes prompts is not supported")
    return modes


def _activation(name: str | None, where: Path) -> str:
    short = (name or "torch.nn.modules.activation.Tanh").rsplit(".", 1)[-1]
    if short not in _ACTIVATIONS:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{where}: Dense activation {name!r} is not supported")
    return short


def read_st_config(model_dir: Path | str) -> StConfig:
    """The module list of ``model_dir``; a plain Hugging Face folder gets mean pooling + Normalize.

    Refuses (``BUNDLE_INVALID``) any module it would otherwise silently skip: an unknown module type,
    an unsupported pooling mode or activation.
    """
    root = Path(model_dir)
    modules_path = root / ST_MODULES
    if not modules_path.is_file():
        log.warning("%s has no %s: assuming mean pooling + L2 normalisation", root, ST_MODULES)
        return StConfig(declared=False)
    try:
        modules = json.loads(modules_path.read_text())
    except json.JSONDecodeError as exc:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{modules_path}: not JSON ({exc})") from exc
    pooling: tuple[str, ...] | None = None
    dense: list[DenseSpec] = []
    normalize = False
    for i, mod in enumerate(sorted(modules, key=lambda m: int(m.get("idx", 0)))):
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        sub = root / str(mod.get("path", ""))
        if kind == "Transformer":
            if i != 0:
                raise CropsError(ErrorKind.BUNDLE_INVALID, f"{modules_path}: the Transformer must come first")
        elif kind == "Pooling":
            pooling = _pooling_modes(json.loads((sub / "config.json").read_text()), sub)
        elif kind == "Dense":
            if pooling is None:
                raise CropsError(ErrorKind.BUNDLE_INVALID, f"{modules_path}: Dense before Pooling")
            cfg = json.loads((sub / "config.json").read_text())
            dense.append(
                DenseSpec(
                    path=str(mod.get("path", "")),
                    in_features=int(cfg["in_features"]),
                    out_features=int(cfg["out_features"]),
                    bias=bool(cfg.get("bias", True)),
                    activation=_activation(cfg.get("activation_function"), sub),
                )
            )
        elif kind == "Normalize":
            normalize = True
        else:
            raise CropsError(
                ErrorKind.BUNDLE_INVALID, f"{modules_path}: module type {mod.get('type')!r} is not supported"
            )
    if pooling is None:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{modules_path}: no Pooling module")
    return StConfig(pooling=pooling, dense=tuple(dense), normalize=normalize)
