"""Torch text encoder for the training stage: HF model + attention-mask mean pooling + L2 norm.

Same maths as the exported ONNX tower (model_export), so offline evaluation here and serving agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.normalize import normalize_text
from core.tokenizer import default_model_dir, encode_batch, load_tokenizer


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class TextEncoder(nn.Module):
    """One tower. ``forward(ids, mask)`` → unit-length embeddings."""

    def __init__(self, model_dir: Path | str | None = None, max_length: int = 64) -> None:
        super().__init__()
        from transformers import AutoModel

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.model = AutoModel.from_pretrained(str(self.model_dir))
        self.tokenizer = load_tokenizer(self.model_dir, max_length)
        self.max_length = max_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        return nn.functional.normalize(mean_pool(out, attention_mask), p=2.0, dim=-1)

    def tokenize(self, texts: Sequence[str], *, normalized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        batch = list(texts) if normalized else [normalize_text(t) for t in texts]
        ids, mask = encode_batch(self.tokenizer, batch)
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 128, *, normalized: bool = False) -> np.ndarray:
        """Embeddings (n, dim) float32 in input order (batches sorted by length to cut padding)."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        dim = int(self.model.config.hidden_size)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, mask = self.tokenize([texts[i] for i in idx], normalized=normalized)
            out[idx] = self(ids, mask).float().cpu().numpy()
        self.train(was_training)
        return out

    def save(self, out_dir: Path | str) -> None:
        """Write an HF model folder + tokenizer.json: what ``crops export --checkpoint`` reads."""
        import shutil

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir))
        shutil.copyfile(self.model_dir / "tokenizer.json", out_dir / "tokenizer.json")
        for extra in ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (self.model_dir / extra).is_file():
                shutil.copyfile(self.model_dir / extra, out_dir / extra)


def pretrained_encode_fn(batch_size: int = 128) -> Callable[[list[str]], np.ndarray]:
    """The pretrained MiniLM as a plain ``texts → vectors`` function (for the world's dense baseline).

    One intra-op thread unless ``CROPS_TORCH_THREADS`` says otherwise: two threads on a busy 2-core box
    oversubscribe. Uses CUDA when available.
    """
    import os

    torch.set_num_threads(int(os.environ.get("CROPS_TORCH_THREADS", "1")))
    encoder = TextEncoder()
    if torch.cuda.is_available():
        encoder = encoder.to("cuda")

    def encode(texts: list[str]) -> np.ndarray:
        return encoder.encode(texts, batch_size=batch_size, normalized=True)

    return encode
