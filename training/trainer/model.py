"""Dual encoder for training: HF towers with an optional frozen, cached bottom.

Two recipes share this code:
- full fine-tuning (``n_train_layers=0``): every weight trains, inputs are token ids (the GPU recipe);
- top-layer training (``n_train_layers=k``): the embeddings and the lower layers stay frozen, so
  their output per text is computed once (``HiddenCache``) and a step only runs the top k layers +
  pooling. On 2 CPU cores this is what makes nine methods × three seeds fit in an hour,
  and every method gets the same recipe, so the comparison stays fair.
Both run the shared ``towers.SentenceEncoder`` (pooling, Dense and normalisation from the checkpoint's
own sentence-transformers config), so they give the embeddings export reproduces (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.atomic import atomic_path, atomic_write_json
from core.checkpoint import (
    ADAPTER_META,
    ADAPTER_WEIGHTS,
    CHECKPOINT_META,
    CHECKPOINT_SCHEMA_VERSION,
    DOC_TOWER,
    META_MAX_DOC_TOKENS,
    META_MAX_QUERY_TOKENS,
    META_SCHEMA_VERSION,
    QUERY_TOWER,
)
from core.normalize import normalize_text
from core.tokenizer import default_model_dir, encode_batch, load_tokenizer
from towers import SentenceEncoder


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class Tower(nn.Module):
    """One encoder tower. ``split`` = index of the first trainable layer (0: everything trains)."""

    def __init__(self, encoder: SentenceEncoder, n_train_layers: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.model: Any = encoder.transformer
        hf_model = self.model
        n_layers = len(self.layers)
        if not 0 <= n_train_layers <= n_layers:
            raise ValueError(f"n_train_layers must be in 0..{n_layers}, got {n_train_layers}")
        self.split = 0 if n_train_layers == 0 else n_layers - n_train_layers
        if self.split > 0:
            for p in hf_model.embeddings.parameters():
                p.requires_grad_(False)
            for layer in self.layers[: self.split]:
                for p in layer.parameters():
                    p.requires_grad_(False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layer  # type: ignore[no-any-return]

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def cached(self) -> bool:
        return self.split > 0

    def forward_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(ids, mask)
        return out

    @torch.no_grad()
    def bottom(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states entering the first trainable layer (frozen part, no gradient)."""
        return self.encoder.hidden(ids, mask, output_hidden_states=True).hidden_states[self.split]  # type: ignore[no-any-return]

    def top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Trainable layers + the tower's head (pooling, Dense, L2) over cached bottom states."""
        ext = _additive_mask(mask, hidden.dtype)
        for layer in self.layers[self.split :]:
            out = layer(hidden, attention_mask=ext)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.encoder.head(hidden, mask)


class HiddenCache:
    """Frozen-bottom hidden states per normalised text, computed once (fp16, unpadded)."""

    def __init__(self, tower: Tower, tokenizer: Any, batch_size: int = 64) -> None:
        self.tower, self.tokenizer, self.batch_size = tower, tokenizer, batch_size
        self.rows: dict[str, int] = {}
        self.states: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.states)

    def add(self, texts: Sequence[str], progress: bool = False) -> None:
        """Compute the states of the texts not cached yet (normalised texts)."""
        todo = sorted({t for t in texts if t not in self.rows}, key=len)
        if not todo:
            return
        from tqdm import tqdm

        device = self.tower.model.device
        starts = range(0, len(todo), self.batch_size)
        for s in tqdm(starts, desc="cache lower layers", disable=not progress, unit="batch"):
            chunk = todo[s : s + self.batch_size]
            ids, mask = encode_batch(self.tokenizer, chunk)
            h = self.tower.bottom(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
            lengths = mask.sum(axis=1)
            for text, row, n in zip(chunk, h, lengths, strict=True):
                self.rows[text] = len(self.states)
                self.states.append(row[: int(n)].to(torch.float16).cpu())

    def batch(self, texts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded float32 states and mask for texts (adds missing ones first)."""
        self.add(texts)
        rows = [self.states[self.rows[t]] for t in texts]
        longest = max(r.shape[0] for r in rows)
        dim = rows[0].shape[1]
        hidden = torch.zeros(len(rows), longest, dim, dtype=torch.float32)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, r in enumerate(rows):
            hidden[i, : r.shape[0]] = r.float()
            mask[i, : r.shape[0]] = 1
        return hidden.to(device), mask.to(device)


class PooledCache:
    """Frozen full-model embeddings (pooled, unit length) per normalised text, computed once."""

    def __init__(self, tower: Tower, tokenizer: Any, batch_size: int = 64) -> None:
        self.tower, self.tokenizer, self.batch_size = tower, tokenizer, batch_size
        self.rows: dict[str, int] = {}
        self.chunks: list[torch.Tensor] = []
        self._matrix: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def matrix(self) -> torch.Tensor:
        if self._matrix is None or self._matrix.shape[0] != len(self.rows):
            self._matrix = torch.cat(self.chunks) if self.chunks else torch.zeros(0, self.tower.dim)
            self.chunks = [self._matrix]
        return self._matrix

    def add(self, texts: Sequence[str], progress: bool = False) -> None:
        todo = sorted({t for t in texts if t not in self.rows}, key=len)
        if not todo:
            return
        from tqdm import tqdm

        device = self.tower.model.device
        for s in tqdm(
            range(0, len(todo), self.batch_size), desc="cache embeddings", disable=not progress, unit="batch"
        ):
            chunk = todo[s : s + self.batch_size]
            ids, mask = encode_batch(self.tokenizer, chunk)
            with torch.no_grad():
                e = self.tower.forward_tokens(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
            for text in chunk:
                self.rows[text] = len(self.rows)
            self.chunks.append(e.float().cpu())

    def batch(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        self.add(texts)
        idx = torch.tensor([self.rows[t] for t in texts], dtype=torch.long)
        return self.matrix.index_select(0, idx).to(device)

    def save(self, path: Path | str) -> None:
        with atomic_path(path) as tmp:
            torch.save({"texts": list(self.rows), "emb": self.matrix}, tmp)

    def load(self, path: Path | str) -> None:
        state = torch.load(path, weights_only=False)
        self.rows = {t: i for i, t in enumerate(state["texts"])}
        self.chunks, self._matrix = [state["emb"]], state["emb"]


def identity_linear(dim: int) -> nn.Linear:
    lin = nn.Linear(dim, dim)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(dim))
        lin.bias.zero_()
    return lin


class DualEncoder(nn.Module):
    """Query and doc towers (one shared object or two copies) from any sentence-transformers folder."""

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        shared: bool = True,
        n_train_layers: int = 0,
        max_query_tokens: int = 16,
        max_doc_tokens: int = 32,
        adapter: bool = False,
    ) -> None:
        """``adapter=True``: the whole encoder is frozen and only a linear map per tower (identity at
        start) trains over cached pooled embeddings — the cheapest recipe, for the CPU experiment;
        its checkpoint is not an HF folder (see ``save``)."""
        super().__init__()
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        base = SentenceEncoder(self.model_dir)
        self.query_tower = Tower(base, n_train_layers)
        self.doc_tower = self.query_tower if shared else Tower(copy.deepcopy(base), n_train_layers)
        self.shared = shared
        self.n_train_layers = n_train_layers
        self.q_tok = load_tokenizer(self.model_dir, max_query_tokens)
        self.d_tok = load_tokenizer(self.model_dir, max_doc_tokens)
        self.max_query_tokens, self.max_doc_tokens = max_query_tokens, max_doc_tokens
        self.adapter = adapter
        self.q_cache: HiddenCache | None = None
        self.d_cache: HiddenCache | None = None
        self.q_pooled: PooledCache | None = None
        self.d_pooled: PooledCache | None = None
        if adapter:
            for p in base.parameters():
                p.requires_grad_(False)
            self.q_adapter = identity_linear(self.query_tower.dim)
            self.d_adapter = self.q_adapter if shared else identity_linear(self.query_tower.dim)
            self.q_pooled = PooledCache(self.query_tower, self.q_tok)
            self.d_pooled = PooledCache(self.query_tower, self.d_tok)
        elif self.query_tower.cached:
            # the frozen bottom is the pretrained one in both towers: one cache per side suffices
            self.q_cache = HiddenCache(self.query_tower, self.q_tok)
            self.d_cache = HiddenCache(self.query_tower, self.d_tok)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        seen: set[int] = set()
        out = []
        for p in self.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def share_caches(self, other: DualEncoder) -> None:
        """Reuse another encoder's caches (same base model and token limits): computed once per run set."""
        self.q_cache, self.d_cache = other.q_cache, other.d_cache
        self.q_pooled, self.d_pooled = other.q_pooled, other.d_pooled

    def _embed(self, texts: Sequence[str], side: str) -> torch.Tensor:
        if self.adapter:
            pooled = self.q_pooled if side == "q" else self.d_pooled
            assert pooled is not None
            lin = self.q_adapter if side == "q" else self.d_adapter
            return nn.functional.normalize(lin(pooled.batch(texts, self.device)), p=2.0, dim=-1)
        tower = self.query_tower if side == "q" else self.doc_tower
        if tower.cached:
            cache = self.q_cache if side == "q" else self.d_cache
            assert cache is not None
            hidden, mask = cache.batch(texts, self.device)
            return tower.top(hidden, mask)
        ids_np, mask_np = encode_batch(self.q_tok if side == "q" else self.d_tok, list(texts))
        return tower.forward_tokens(torch.from_numpy(ids_np).to(self.device), torch.from_numpy(mask_np).to(self.device))

    def embed_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings with gradient; texts must already be normalised."""
        return self._embed(texts, "q")

    def embed_docs(self, texts: Sequence[str]) -> torch.Tensor:
        return self._embed(texts, "d")

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        side: str = "d",
        batch_size: int = 256,
        normalized: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """float32 (n, dim) embeddings in input order, batches sorted by length."""
        from tqdm import tqdm

        texts = list(texts) if normalized else [normalize_text(t) for t in texts]
        was = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.query_tower.dim), dtype=np.float32)
        for s in tqdm(range(0, len(order), batch_size), desc=f"encode {side}", disable=not progress):
            idx = order[s : s + batch_size]
            out[idx] = self._embed([texts[i] for i in idx], side).float().cpu().numpy()
        self.train(was)
        return out

    def _meta(self) -> dict[str, Any]:
        """What every checkpoint records about the run (``core.checkpoint``); export enforces the limits."""
        return {
            META_SCHEMA_VERSION: CHECKPOINT_SCHEMA_VERSION,
            "base_model": str(self.model_dir),
            "shared_towers": self.shared,
            "pooling": self.query_tower.encoder.config.pooling_name,
            META_MAX_QUERY_TOKENS: self.max_query_tokens,
            META_MAX_DOC_TOKENS: self.max_doc_tokens,
        }

    def save(self, out_dir: Path | str, meta: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint folder ``crops export --checkpoint`` reads (layout: ``core.checkpoint``).

        The adapter recipe is not an HF folder (a linear map after pooling): it writes ``adapter.pt``
        + ``crops_adapter.json`` (the base model folder), which export folds into the ONNX towers.
        """
        out_dir = Path(out_dir)
        if self.adapter:
            with atomic_path(out_dir / ADAPTER_WEIGHTS) as tmp:
                torch.save({"q": self.q_adapter.state_dict(), "d": self.d_adapter.state_dict()}, tmp)
            atomic_write_json(out_dir / ADAPTER_META, {**self._meta(), **(meta or {})})
            return out_dir
        with atomic_path(out_dir) as tmp:  # a reader never sees half a checkpoint
            towers = (
                [(tmp, self.query_tower)]
                if self.shared
                else [(tmp / QUERY_TOWER, self.query_tower), (tmp / DOC_TOWER, self.doc_tower)]
            )
            for path, tower in towers:
                tower.encoder.save(path, tokenizer_from=self.model_dir)
            atomic_write_json(tmp / CHECKPOINT_META, {**self._meta(), **(meta or {})})
        return out_dir
