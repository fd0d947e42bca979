"""PyTorch DDP plumbing, for runs started with ``torchrun``; a no-op in a single process.

NCCL on GPUs, gloo on CPU. Only rank 0 writes checkpoints, logs and reports.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["resolve_device", "init_distributed", "is_distributed", "rank", "world_size", "is_main", "barrier", "gather_objects", "cleanup"]


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when present (the local rank's GPU under torchrun), else CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and "LOCAL_RANK" in os.environ:
        spec = f"cuda:{os.environ['LOCAL_RANK']}"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but CUDA is not available; use device=cpu or auto")
    return torch.device(spec)


def init_distributed(device: torch.device) -> bool:
    """Join the process group if launched by torchrun (``WORLD_SIZE`` > 1). Returns whether DDP is on."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
