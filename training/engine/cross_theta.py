"""θ as the paper has it: a trained transformer cross-encoder over (query, video text) pairs.

The encoder is initialised from the offline MiniLM-L6 weights (``n_layers`` of its 6 layers; the
paper's θ has 6), reads the query and the video text as one sequence (``[CLS] q [SEP] d [SEP]``),
mean-pools, and a linear head gives the margin; Platt scaling, fit on a held-out calibration split
of queries, turns it into a probability, as for the bi-encoder θ. Fine-tuning sees every word of
both texts together, so it can learn that "python tutorial" and a video about ball pythons do not
match although they share a word, which a frozen bi-encoder with a logistic head cannot.

Cost: every candidate pair runs through the transformer (no per-text cache), so it is meant for a
GPU (``--theta-backend cross``); on 2 CPU cores use few steps, fewer layers and short inputs, on a
small world.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_json
from core.errors import CropsError, ErrorKind
from core.normalize import normalize_text
from training.engine.discriminator import (
    FitReport,
    fit_platt,
    sigmoid,
)


class _NoCache:
    """The bi-encoder θ persists text embeddings between steps; a cross-encoder has none."""

    def save(self) -> None:
        return None


class CrossEncoderTheta:
    """θ(q, d) ∈ [0, 1]: fine-tuned MiniLM cross-encoder → linear head → Platt scaling."""

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        n_layers: int = 6,
        max_length: int = 64,
        steps: int = 300,
        batch_size: int = 32,
        lr: float = 3e-5,
        threads: int = 2,
    ) -> None:
        if not 1 <= n_layers <= 6 or steps < 1 or max_length < 8:
            raise CropsError(ErrorKind.INVALID_INPUT, "cross θ: 1..6 layers, steps >= 1, max_length >= 8")
        self.model_dir = model_dir
        self.n_layers, self.max_length, self.steps = n_layers, max_length, steps
        self.batch_size, self.lr, self.threads = batch_size, lr, threads
        self.cache = _NoCache()
        self.w: Any = None  # set once fitted or loaded (the pipeline checks it like the bi-encoder's head)
        self.platt: tuple[float, float] = (1.0, 0.0)
        self._model: Any = None
        self._head: Any = None
        self._tok: Any = None

    # -- model
    def _device(self) -> Any:
        import torch

        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _build(self, source: Path | None = None) -> None:
        import torch
        from transformers import AutoModel

        from core.tokenizer import default_model_dir, load_tokenizer

        torch.set_num_threads(max(1, self.threads))
        base = Path(self.model_dir) if self.model_dir else default_model_dir()
        model = AutoModel.from_pretrained(str(source or base))
        model.encoder.layer = model.encoder.layer[: self.n_layers]
        model.config.num_hidden_layers = self.n_layers
        self._model = model.to(self._device())
        self._head = torch.nn.Linear(int(model.config.hidden_size), 1).to(self._device())
        self._tok = load_tokenizer(base, self.max_length)
        self._tok.enable_truncation(self.max_length, strategy="longest_first")
        self._tok.enable_padding()

    def _margins(self, queries: Sequence[str], docs: Sequence[str]) -> Any:
        import torch

        enc = self._tok.encode_batch(list(zip(queries, docs, strict=True)))
        dev = self._device()
        ids = torch.tensor([e.ids for e in enc], device=dev)
        mask = torch.tensor([e.attention_mask for e in enc], device=dev)
        types = torch.tensor([e.type_ids for e in enc], device=dev)
        hidden = self._model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self._head(pooled).squeeze(-1)

    def pair_margins(self, queries: Sequence[str], docs: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Head margins (before Platt) for aligned lists of query and document texts."""
        import torch
        from tqdm import tqdm

        if self._model is None:
            raise CropsError(ErrorKind.INVALID_INPUT, "the cross-encoder θ is not fitted")
        q = [normalize_text(x) for x in queries]
        d = [normalize_text(x) for x in docs]
        order = sorted(range(len(q)), key=lambda i: (len(q[i]) + len(d[i]), i))
        out = np.zeros(len(q), dtype=np.float64)
        bs = 512 if self._device().type == "cuda" else 64
        self._model.eval()
        with torch.no_grad():
            for s in tqdm(range(0, len(order), bs), desc="cross θ", disable=not progress, unit="batch"):
                idx = order[s : s + bs]
                out[idx] = self._margins([q[i] for i in idx], [d[i] for i in idx]).float().cpu().numpy()
        return out

    def score(self, queries: Sequence[str], docs: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if len(queries) == 0:
            return np.zeros(0)
        a, b = self.platt
        return sigmoid(a * self.pair_margins(queries, docs, progress=progress) + b)

    # -- fit
    def fit(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        labels: Sequence[int],
        *,
        seed: int = 0,
        progress: bool = False,
        calib_mask: np.ndarray | None = None,
    ) -> FitReport:
        """Fine-tune on labelled pairs split 60/20/20 by query (train / calibration / test), like the
        bi-encoder θ; ``calib_mask`` restricts calibration and test to the pairs θ is applied to."""
        import torch
        from tqdm import tqdm

        t0 = time.perf_counter()
        torch.manual_seed(seed)
        self._build()
        y = np.asarray(labels, dtype=np.int64)
        _, groups = np.unique(np.asarray(list(queries), dtype=object).astype(str), return_inverse=True)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(int(groups.max()) + 1 if len(groups) else 0)
        part = np.empty(len(perm), dtype=np.int64)
        cut1, cut2 = int(0.6 * len(perm)), int(0.8 * len(perm))
        part[perm[:cut1]], part[perm[cut1:cut2]], part[perm[cut2:]] = 0, 1, 2
        split = part[groups]
        tr, ca, te = split == 0, split == 1, split == 2
        if calib_mask is not None:
            ca, te = ca & calib_mask, te & calib_mask
        for name, m in (("train", tr), ("calibration", ca), ("test", te)):
            if len(np.unique(y[m])) < 2:
                raise CropsError(ErrorKind.INVALID_INPUT, f"cross θ needs both labels in its {name} split")
        q = [normalize_text(x) for x in queries]
        d = [normalize_text(x) for x in docs]
        train_idx = np.flatnonzero(tr)
        n_pos = max(1.0, float((y[tr] == 1).sum()))
        pos_weight = torch.tensor(float((y[tr] == 0).sum()) / n_pos, device=self._device())
        opt = torch.optim.AdamW(
            [{"params": self._model.parameters(), "lr": self.lr}, {"params": self._head.parameters(), "lr": 1e-3}],
            weight_decay=0.01,
        )
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self._model.train()
        losses = []
        for _ in tqdm(range(self.steps), desc="fit cross θ", disable=not progress):
            idx = rng.choice(train_idx, size=min(self.batch_size, len(train_idx)), replace=False)
            logits = self._margins([q[i] for i in idx], [d[i] for i in idx])
            loss = loss_fn(logits, torch.tensor(y[idx], dtype=logits.dtype, device=logits.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*self._model.parameters(), *self._head.parameters()], 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        self.w = "fitted"
        margin_ca = self.pair_margins([q[i] for i in np.flatnonzero(ca)], [d[i] for i in np.flatnonzero(ca)])
        self.platt = fit_platt(margin_ca, y[ca])
        te_i = np.flatnonzero(te)
        margin_te = self.pair_margins([q[i] for i in te_i], [d[i] for i in te_i])
        raw, cal = sigmoid(margin_te), sigmoid(self.platt[0] * margin_te + self.platt[1])
        self.fit_losses = (float(np.mean(losses[:10])), float(np.mean(losses[-10:])))
        return FitReport.of(y, tr, ca, te, raw, cal, self.platt, t0)

    # -- persistence
    def save(self, folder: Path) -> None:
        import torch

        if self._model is None:
            raise CropsError(ErrorKind.INVALID_INPUT, "cannot save an unfitted cross-encoder θ")
        folder.mkdir(parents=True, exist_ok=True)
        self._model.save_pretrained(str(folder / "encoder"))
        torch.save(self._head.state_dict(), folder / "head.pt")
        atomic_write_json(
            folder / "theta.json",
            {
                "kind": "cross-encoder",
                "platt_a": self.platt[0],
                "platt_b": self.platt[1],
                "n_layers": self.n_layers,
                "max_length": self.max_length,
                "steps": self.steps,
                "encoder": str(self.model_dir or "default all-MiniLM-L6-v2"),
            },
        )

    def load(self, folder: Path) -> CrossEncoderTheta:
        import torch

        meta = json.loads((folder / "theta.json").read_text())
        self.n_layers, self.max_length = int(meta["n_layers"]), int(meta["max_length"])
        self._build(folder / "encoder")
        self._head.load_state_dict(torch.load(folder / "head.pt", map_location=self._device(), weights_only=True))
        self.platt = (float(meta["platt_a"]), float(meta["platt_b"]))
        self.w = "loaded"
        return self
