"""Test-time augmentation: the left-right mirror average of a score and the seeded views behind the uncertainty."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F


def mirror_average(z: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``eval.flip_average``: the mean of ``z`` (the logits of ``x``) and the logits of ``x`` mirrored left to right."""
    return (z + forward(torch.flip(x, dims=[-1])).float()) / 2


def tta_views(x: torch.Tensor, n: int, aug: dict[str, Any], seed: int = 0) -> torch.Tensor:
    """``n`` augmented copies of one input (1, C, S, S): flips and a small affine.

    Flips follow the training augmentation (a horizontal flip only if training used it, the
    same for vertical); rotation, scale and translation are capped at 10 degrees, 10 % and
    5 %. Seeded, so the uncertainty of an image is reproducible.
    """
    g = torch.Generator().manual_seed(seed)
    u = lambda: torch.rand(n, generator=g) * 2 - 1  # noqa: E731
    rot = np.deg2rad(min(float(aug.get("rotate_deg", 10.0)), 10.0)) * u()
    scale = 1 + min(float(aug.get("scale", 0.1)), 0.1) * u()
    tx, ty = (min(float(aug.get("translate", 0.05)), 0.05) * 2 * u() for _ in range(2))
    fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if aug.get("hflip", 0.5) > 0 else torch.ones(n)
    fy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if aug.get("vflip", 0.0) > 0 else torch.ones(n)
    cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
    theta = torch.stack([torch.stack([cos * fx, -sin * fy, tx], 1), torch.stack([sin * fx, cos * fy, ty], 1)], 1)
    xs = x.expand(n, *x.shape[1:])
    grid = F.affine_grid(theta.to(x), list(xs.shape), align_corners=False)
    out = F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if out.shape[1] > 1:  # the mask channel stays binary
        out[:, 1:] = (out[:, 1:] > 0.5).to(out.dtype)
    return out
