"""``SentenceEncoder``: Transformer → Pooling → Dense* → L2, from the folder's own config."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.checkpoint import ST_MODULES, TOKENIZER_FILES
from core.errors import CropsError, ErrorKind
from towers.st_config import LEGACY_POOLING_KEYS, DenseSpec, StConfig, read_st_config

log = logging.getLogger(__name__)

Adapter = dict[str, torch.Tensor]
"""State of an ``nn.Linear(dim, dim)`` applied after the head (the adapter recipe)."""


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """Token states (B, T, H) → sentence vectors (B, H × len(modes)), padding excluded."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[:, 0])
        elif mode in ("mean", "mean_sqrt_len"):
            total = (hidden * m).sum(dim=1)
            count = m.sum(dim=1).clamp(min=1e-9)
            out.append(total / count if mode == "mean" else total / count.sqrt())
        elif mode == "max":
            out.append(hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values)
        elif mode == "lasttoken":  # right padding: the last real token of each row
            last = mask.sum(dim=1).long().clamp(min=1) - 1
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        else:
            raise ValueError(f"pooling mode {mode!r}")
    return torch.cat(out, dim=-1)


class Dense(nn.Module):
    """``sentence_transformers.models.Dense``: activation(linear(x))."""

    def __init__(self, spec: DenseSpec) -> None:
        super().__init__()
        self.spec = spec
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        self.activation: nn.Module = getattr(nn, spec.activation)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))

    def load_from(self, folder: Path) -> None:
        if (folder / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
        elif (folder / "pytorch_model.bin").is_file():
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{folder}: Dense layer without weights")
        self.load_state_dict({"linear." + k.removeprefix("linear."): v for k, v in state.items()})

    def save_to(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        act = (
            "torch.nn.modules.linear.Identity"
            if self.spec.activation == "Identity"
            else (f"torch.nn.modules.activation.{self.spec.activation}")
        )
        cfg = {
            "in_features": self.spec.in_features,
            "out_features": self.spec.out_features,
            "bias": self.spec.bias,
            "activation_function": act,
        }
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))


class SentenceEncoder(nn.Module):
    """One tower. ``forward(ids, mask)`` → unit-length embeddings (float32).

    The output is always L2-normalised: the index and the service score by inner product on unit
    vectors. A checkpoint whose config has no Normalize module is warned about, not silently changed
    in meaning (its cosine ranking is what serves).
    """

    def __init__(self, model_dir: Path | str, adapter: Adapter | None = None) -> None:
        super().__init__()
        from transformers import AutoModel
        from transformers import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        self.model_dir = Path(model_dir)
        self.config: StConfig = read_st_config(self.model_dir)
        if not self.config.normalize:
            log.warning("%s declares no Normalize module: embeddings are L2-normalised anyway", self.model_dir)
        self.transformer: Any = AutoModel.from_pretrained(str(self.model_dir))
        layers = [Dense(spec) for spec in self.config.dense]
        for layer in layers:
            layer.load_from(self.model_dir / layer.spec.path)
        self.dense = nn.ModuleList(layers)
        self.adapter: nn.Linear | None = None
        if adapter is not None:
            out_dim, in_dim = adapter["weight"].shape
            self.adapter = nn.Linear(in_dim, out_dim)
            self.adapter.load_state_dict(adapter)

    @property
    def dim(self) -> int:
        if self.adapter is not None:
            return int(self.adapter.out_features)
        if self.config.dense:
            return self.config.dense[-1].out_features
        return int(self.transformer.config.hidden_size) * len(self.config.pooling)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> Any:
        """The transformer's output for token ids (``token_type_ids`` zero: one segment)."""
        return self.transformer(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), **kwargs)

    def head(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooling → Dense* → L2 (→ adapter → L2) over the last hidden states."""
        x = pool(hidden, mask, self.config.pooling)
        for layer in self.dense:
            x = layer(x)
        x = nn.functional.normalize(x, p=2.0, dim=-1)
        if self.adapter is not None:
            x = nn.functional.normalize(self.adapter(x), p=2.0, dim=-1)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(input_ids, attention_mask).last_hidden_state, attention_mask)

    def save(self, out_dir: Path | str, tokenizer_from: Path | str | None = None) -> None:
        """A sentence-transformers folder: HF weights, tokenizer files, modules.json, Pooling, Dense.

        The adapter is not part of the folder (the adapter recipe saves it next to the base model).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(str(out))
        src = Path(tokenizer_from) if tokenizer_from else self.model_dir
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
        modules: list[dict[str, Any]] = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        (out / "1_Pooling").mkdir(exist_ok=True)
        # the boolean keys every sentence-transformers version reads
        pooling_cfg: dict[str, Any] = {"word_embedding_dimension": int(self.transformer.config.hidden_size)}
        pooling_cfg.update({key: mode in self.config.pooling for key, mode in LEGACY_POOLING_KEYS.items()})
        (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg, indent=2))
        for i, layer in enumerate(self.dense, start=2):
            path = f"{i}_Dense"
            assert isinstance(layer, Dense)
            layer.save_to(out / path)
            modules.append({"idx": i, "name": str(i), "path": path, "type": "sentence_transformers.models.Dense"})
        if self.config.normalize:
            n = len(modules)
            modules.append(
                {"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
        (out / ST_MODULES).write_text(json.dumps(modules, indent=2))
