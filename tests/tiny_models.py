"""A tiny random BERT with the real MiniLM tokenizer: model folders for fast tests."""

from __future__ import annotations

import shutil
from pathlib import Path


def write_tiny_bert(out: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT (random weights, seeded) + the offline MiniLM's tokenizer files."""
    import torch
    from transformers import BertConfig, BertModel

    from core.checkpoint import TOKENIZER_FILES
    from core.tokenizer import default_model_dir

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(str(out))
    src = default_model_dir()
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    return out
