"""Benchmark: H-InfoNCE vs InfoNCE on the same batch (target: H-InfoNCE step ≤ 1.15× InfoNCE).

Two measurements, medians over repeats, 1 torch thread (the reference box has 2 noisy cores):
- loss only: forward + backward of the loss on a Q×D score matrix made from Q×dim and D×dim
  embeddings (the part the two methods do differently);
- training step: the experiment's CPU recipe (the trainable top transformer layer over cached
  lower-layer states, mean pooling, the loss, AdamW) on one batch of 32 queries × 8 docs,
  with each loss.
Writes docs/results/loss_bench.md (+ JSON next to it).

    python -m benchmarks.loss_bench [--repeats 30] [--no-step]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch

from training.losses import hinfonce_loss, infonce_loss

# On CPU we time process CPU time, not wall time: the box is shared by several busy agents, and
# waiting for a core is not the loss's cost (1 torch thread, so CPU time ≈ the work done).
_clock = time.perf_counter


def _median_time(fn, repeats: int, warmup: int = 3) -> float:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = _clock()
        fn()
        times.append(_clock() - t0)
    return statistics.median(times)


def loss_only(q: int, d: int, dim: int, repeats: int, device: str) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    qe = torch.nn.functional.normalize(torch.randn(q, dim, generator=g), dim=-1).to(device)
    de = torch.nn.functional.normalize(torch.randn(d, dim, generator=g), dim=-1).to(device)
    levels = torch.randint(0, 6, (q, d), generator=g)
    levels[torch.rand(q, d, generator=g) < 0.9] = 0  # most pairs are in-batch negatives
    levels = levels.to(device)
    binary = (levels >= 4).long()

    def run(loss_fn, lab):  # type: ignore[no-untyped-def]
        def step() -> None:
            a = qe.clone().requires_grad_(True)
            b = de.clone().requires_grad_(True)
            loss_fn(a @ b.T, lab).backward()
            if device == "cuda":
                torch.cuda.synchronize()

        return step

    th, ti = [], []  # interleaved rounds spread the (shared, noisy) machine's load over both
    for _ in range(5):
        th.append(_median_time(run(hinfonce_loss, levels), max(repeats // 5, 3), warmup=1))
        ti.append(_median_time(run(infonce_loss, binary), max(repeats // 5, 3), warmup=1))
    t_h, t_i = statistics.median(th), statistics.median(ti)
    return {"Q": q, "D": d, "hinfonce_ms": t_h * 1e3, "infonce_ms": t_i * 1e3, "ratio": t_h / t_i}


def train_step(repeats: int, device: str) -> dict[str, float]:
    from transformers import AutoModel

    from core.tokenizer import default_model_dir
    from training.trainer.model import Tower

    tower = Tower(AutoModel.from_pretrained(str(default_model_dir())), n_train_layers=1).to(device)
    enc = tower.top
    params = [p for p in tower.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    q, per_q, qlen, dlen, dim = 32, 8, 12, 24, tower.dim
    qh = torch.randn(q, qlen, dim, generator=g).to(device)
    dh = torch.randn(q * per_q, dlen, dim, generator=g).to(device)
    qm = torch.ones(q, qlen, dtype=torch.long, device=device)
    dm = torch.ones(q * per_q, dlen, dtype=torch.long, device=device)
    levels = torch.zeros(q, q * per_q, dtype=torch.long)
    for i in range(q):
        levels[i, i * per_q : (i + 1) * per_q] = torch.tensor([5, 4, 4, 3, 3, 2, 1, 1])
    levels = levels.to(device)
    binary = (levels >= 4).long()
    opt = torch.optim.AdamW(params, lr=1e-5)

    def run(loss_fn, lab):  # type: ignore[no-untyped-def]
        def step() -> None:
            opt.zero_grad()
            s = enc(qh, qm) @ enc(dh, dm).T
            loss_fn(s, lab).backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()

        return step

    # interleave to spread machine noise over both
    th, ti = [], []
    for _ in range(3):
        th.append(_median_time(run(hinfonce_loss, levels), max(repeats // 3, 3), warmup=1))
        ti.append(_median_time(run(infonce_loss, binary), max(repeats // 3, 3), warmup=1))
    t_h, t_i = statistics.median(th), statistics.median(ti)
    return {"Q": q, "D": q * per_q, "hinfonce_ms": t_h * 1e3, "infonce_ms": t_i * 1e3, "ratio": t_h / t_i}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--no-step", action="store_true", help="skip the full training-step measurement")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results" / "loss_bench.md"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    global _clock
    _clock = time.perf_counter if device == "cuda" else time.process_time
    rows = [loss_only(q, d, 384, args.repeats, device) for q, d in ((32, 288), (128, 1152), (256, 2304))]
    step = None if args.no_step else train_step(args.repeats, device)
    lines = [
        "# Loss benchmark: H-InfoNCE vs InfoNCE",
        "",
        f"Device: {device}, torch {torch.__version__}, 1 thread, medians of {args.repeats} repeats "
        f"({'wall' if device == 'cuda' else 'process CPU'} time). "
        "Reproduce: `python -m benchmarks.loss_bench`.",
        "",
        "| what | Q | D | H-InfoNCE ms | InfoNCE ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| loss fwd+bwd | {r['Q']} | {r['D']} | {r['hinfonce_ms']:.3f} | {r['infonce_ms']:.3f} "
            f"| {r['ratio']:.2f}× |"
        )
    if step:
        lines.append(
            f"| training step (top layer + loss + AdamW) | {step['Q']} | {step['D']} | "
            f"{step['hinfonce_ms']:.1f} | {step['infonce_ms']:.1f} | {step['ratio']:.2f}× |"
        )
    lines += [
        "",
        "H-InfoNCE buckets each row's exp-scores by level with one scatter_add and takes a cumulative",
        "log-sum-exp over the level buckets: O(Q·D + Q·levels), the same order as InfoNCE's one",
        "log-sum-exp per row. The target (≤ 1.15×) is for the training step, where the encoder",
        "dominates; the loss alone does a few more elementwise passes over the Q×D matrix.",
    ]
    for line in lines:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({"device": device, "loss_only": rows, "step": step}, indent=2)
    )


if __name__ == "__main__":
    main()
