"""GPU path check (full fine-tuning on CUDA): tiny world → mine → train 4 methods → Table 1.

    python3 -m benchmarks.gpu_check --out /tmp/crops-gpu [--steps 150]   (from the repository root)

Runs the ``gpu`` budget (every MiniLM layer trains, token ids in, no cache, CUDA) for crops, fs-lr,
dpr and ance with one seed on a freshly built tiny world, and prints the table, the median step
time, and whether CUDA was used. Exits non-zero when CUDA is absent or a loss does not go down.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/crops-gpu"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--methods", default="crops,fs-lr,dpr,ance")
    args = ap.parse_args()
    import torch

    from training.experiment.runner import run_experiment
    from world.build import build_world
    from world.config import tiny_config

    t0 = time.perf_counter()
    world = args.out / "world"
    if not (world / "videos.parquet").exists():
        build_world(world, tiny_config(), seed=0, progress=False)
    t_world = time.perf_counter() - t0
    res = run_experiment(
        world,
        args.out / "exp",
        methods=args.methods.split(","),
        seeds=1,
        budget="gpu",
        progress=False,
        steps=args.steps,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    summary = {
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "world_s": round(t_world, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "pretrained_ct_recall@100": res["pretrained"].get("ct_recall@100"),
        "methods": {
            m: {k: round(v["mean"], 4) for k, v in c.items() if "/" not in k}
            for m, c in res["methods"].items()
        },
        "runs": {
            m: [
                {k: r.get(k) for k in ("loss_first", "loss_last", "step_seconds", "train_seconds")}
                for r in rs
            ]
            for m, rs in res["runs"].items()
        },
    }
    print((args.out / "exp" / "table1.md").read_text())
    print(json.dumps(summary, indent=2))
    ok = summary["cuda"] and all(
        r["loss_last"] < r["loss_first"] for rs in summary["runs"].values() for r in rs
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
