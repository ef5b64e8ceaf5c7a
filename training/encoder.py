"""The training stage's text encoder: the shared ``towers.SentenceEncoder`` plus a tokenizer.

The maths (pooling, Dense, normalisation from the checkpoint's own config) lives in ``towers`` and
is the same object export traces to ONNX, so offline evaluation here and serving agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from core.normalize import normalize_text
from core.tokenizer import default_model_dir, encode_batch, load_tokenizer
from towers import SentenceEncoder


class TextEncoder(SentenceEncoder):
    """One tower with its tokenizer at ``max_length`` tokens. ``forward(ids, mask)`` → unit vectors."""

    def __init__(self, model_dir: Path | str | None = None, max_length: int = 64) -> None:
        super().__init__(Path(model_dir) if model_dir else default_model_dir())
        self.tokenizer = load_tokenizer(self.model_dir, max_length)
        self.max_length = max_length

    @property
    def model(self) -> torch.nn.Module:
        """The Hugging Face transformer inside the tower."""
        return self.transformer  # type: ignore[no-any-return]

    def tokenize(self, texts: Sequence[str], *, normalized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        batch = list(texts) if normalized else [normalize_text(t) for t in texts]
        ids, mask = encode_batch(self.tokenizer, batch)
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 128, *, normalized: bool = False) -> np.ndarray:
        """Embeddings (n, dim) float32 in input order, with this encoder's tokenizer."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, mask = self.tokenize([texts[i] for i in idx], normalized=normalized)
            out[idx] = self(ids, mask).float().cpu().numpy()
        self.train(was_training)
        return out


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
