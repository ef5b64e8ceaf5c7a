"""The training loop: batches → towers → score matrix → H-InfoNCE / InfoNCE → AdamW.

Checkpoints (trainable weights + optimiser + step) go to ``OUT/train_state.pt`` every
``checkpoint_every`` steps, atomically; a rerun with the same OUT resumes from there and, since
batches depend only on (seed, step), sees the same data. The final model is written as the
checkpoint folder ``OUT/checkpoint`` that ``crops export --checkpoint`` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_path, atomic_write_text
from training.losses import hinfonce_loss, infonce_loss
from training.trainer import distributed as ddp
from training.trainer.config import TrainConfig
from training.trainer.data import BatchSampler, TrainingSet, level_matrix, parse_quota
from training.trainer.model import DualEncoder

log = logging.getLogger(__name__)

HardNegativeFn = Callable[[DualEncoder, TrainingSet], Mapping[str, list[str]]]


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[float] = field(default_factory=list)  # one per step
    steps: int = 0
    seconds: float = 0.0
    step_seconds: float = 0.0  # median seconds per step (excluding index refreshes)
    grad_norms: list[float] = field(default_factory=list)  # one per step, before clipping
    cpu_seconds: float = 0.0  # process CPU time of the loop (wall time lies on a shared, busy box)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from core.errors import CropsError, ErrorKind

        raise CropsError(ErrorKind.INVALID_INPUT, f"device {name!r} asked for but torch sees no CUDA GPU")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def batch_loss(
    model: DualEncoder, cfg: TrainConfig, queries: list[str], doc_texts: list[str], levels: torch.Tensor
) -> torch.Tensor:
    """Loss of one batch, with in-batch negatives over every rank's docs under torchrun."""
    q = model.embed_queries(queries)
    d = model.embed_docs(doc_texts)
    d_all = ddp.gather_with_grad(d)  # levels already cover every rank's docs (see train)
    scores = q @ d_all.T
    levels = levels.to(scores.device)
    if cfg.loss == "hinfonce":
        return hinfonce_loss(scores, levels, temperature=cfg.temperature, min_level=cfg.term_min_level)
    labels = torch.where(levels < 0, -1, (levels >= cfg.pos_level).long())  # masked pairs stay out
    return infonce_loss(scores, labels, temperature=cfg.temperature)


def train(
    ts: TrainingSet,
    cfg: TrainConfig,
    out_dir: Path | str,
    *,
    model_dir: Path | str | None = None,
    model: DualEncoder | None = None,
    hard_negatives: Mapping[str, list[str]] | None = None,
    refresh_hard_negatives: HardNegativeFn | None = None,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a dual encoder on ``ts``; returns the checkpoint folder and the loss curve.

    ``hard_negatives`` (query → doc keys, e.g. BM25's) are fixed; ``refresh_hard_negatives`` (ANCE)
    is called at step 0 and every ``cfg.ance_refresh`` steps with the model being trained. Doc keys
    of hard negatives must have their text in ``ts.doc_text``.
    """
    from tqdm import tqdm

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    rank, world = ddp.init_from_env(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    seed_everything(cfg.seed)
    if model is None:
        model = DualEncoder(
            model_dir,
            shared=cfg.shared_towers,
            n_train_layers=cfg.n_train_layers,
            max_query_tokens=cfg.max_query_tokens,
            max_doc_tokens=cfg.max_doc_tokens,
            adapter=cfg.adapter,
        )
    model.to(device)
    model.train()
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 10%
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return max(0.1, 1.0 - 0.9 * frac)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    state_path = out / "train_state.pt"
    losses: list[float] = []
    grad_norms: list[float] = []
    start = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        named = dict(model.named_parameters())
        for name, tensor in state["params"].items():
            named[name].data.copy_(tensor)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, losses = int(state["step"]), list(state["losses"])
        grad_norms = list(state.get("grad_norms", []))
        log.info("resuming %s at step %d", out, start)

    # each rank draws its own share of the global batch (seed offset by rank)
    sampler = BatchSampler(
        ts, cfg.batch_queries, cfg.docs_per_query, cfg.seed * 1000 + rank, hard_negatives=hard_negatives,
        sampling=cfg.sampling, quota=parse_quota(cfg.level_quota), batch_labels=cfg.batch_labels,
    )

    def refresh(step: int) -> None:
        if refresh_hard_negatives is not None:
            sampler.hard_negatives = dict(refresh_hard_negatives(model, ts))

    if refresh_hard_negatives is not None:
        # the refresh that produced the current step's negatives (deterministic on resume too)
        last = (start // cfg.ance_refresh) * cfg.ance_refresh if start else 0
        if start and last != start:
            log.info("ANCE: refreshing with the resumed model (step %d)", start)
        refresh(last)

    def save_state(step: int) -> None:
        if rank != 0:
            return
        named = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        state = {
            "params": named,
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "step": step,
            "losses": losses,
            "grad_norms": grad_norms,
            "config": cfg.to_dict(),
        }
        with atomic_path(state_path) as tmp:
            torch.save(state, tmp)

    t0, c0 = time.perf_counter(), time.process_time()
    step_times: list[float] = []
    bar = tqdm(
        range(start, cfg.steps),
        desc="train",
        disable=not progress or rank != 0,
        initial=start,
        total=cfg.steps,
    )
    for step in bar:
        if refresh_hard_negatives is not None and step > start and step % cfg.ance_refresh == 0:
            refresh(step)
        ts0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks depend on (seed, step): resumable
        b = sampler.batch(step)
        if world > 1:
            all_keys = [k for keys in ddp.gather_objects(b.doc_keys) for k in keys]  # type: ignore[attr-defined]
            levels = level_matrix(ts, b.queries, b.drawn, all_keys, cfg.batch_labels)
        else:
            levels = b.levels
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, cfg, b.queries, b.doc_texts, levels)
        loss.backward()  # type: ignore[no-untyped-call]
        ddp.average_gradients(params)
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)))
        opt.step()
        sched.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}")
        losses.append(value)
        step_times.append(time.perf_counter() - ts0)
        if step % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every :]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_state(step + 1)
    seconds = time.perf_counter() - t0
    ckpt = out / "checkpoint"
    if rank == 0:
        info = {
            "config": cfg.to_dict(),
            "steps": cfg.steps,
            "final_loss": float(np.mean(losses[-10:])),
            "grad_norm_median": float(np.median(grad_norms)) if grad_norms else None,
            "world_size": world,
            **(meta or {}),
        }
        model.save(ckpt, meta={"training": info})
        atomic_write_text(out / "losses.json", json.dumps(losses))
        atomic_write_text(out / "grad_norms.json", json.dumps(grad_norms))
        state_path.unlink(missing_ok=True)
    cpu = time.process_time() - c0
    return TrainResult(
        ckpt,
        losses,
        cfg.steps,
        seconds,
        float(np.median(step_times)) if step_times else 0.0,
        grad_norms=grad_norms,
        cpu_seconds=cpu,
    )
