"""DDP helpers: torchrun sets RANK/WORLD_SIZE; embeddings are gathered across ranks with gradient.

``gather_with_grad`` uses ``torch.distributed.nn.functional.all_gather``, whose backward sends each
rank's gradient back to the rank that owns the shard, so every rank's in-batch negatives come from
the global batch and the summed gradient is exact. Parameter gradients are averaged by all-reduce
(no DDP wrapper: the towers run twice per step, which DDP's reducer does not expect).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank along dim 0 (row counts may differ), differentiable."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    sizes = [int(n) for n in gather_objects(int(x.shape[0]))]  # type: ignore[call-overload]
    longest = max(sizes)
    padded = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])], dim=0)
    parts = all_gather(padded)  # type: ignore[no-untyped-call]
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)


def gather_objects(obj: object) -> list[object]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
