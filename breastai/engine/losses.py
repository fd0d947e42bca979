"""The classifier's training loss: class-weighted binary cross-entropy, or its focal form.

With z the logit, y in {0, 1}, p = sigmoid(z), p_t = p if y = 1 else 1 - p, and class weights
w_1 = ``pos_weight`` (``train.class_balance: weighted_loss``), w_0 = 1:

- ``ce``: L = -w_y log p_t (``torch.nn.BCEWithLogitsLoss``), with ``train.label_smoothing`` eps
  training on y (1 - eps) + eps / 2;
- ``focal``: L = -w_y (1 - p_t)^gamma log p_t (Lin et al. 2017; gamma = ``train.focal_gamma``).
  The factor (1 - p_t)^gamma takes the weight off examples already classified with confidence, so
  the logits stop growing once the training images are separated; Mukhoti et al. (NeurIPS 2020)
  found the resulting models better calibrated, also under dataset shift.

Both are means over the batch.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["make_loss", "binary_focal_loss"]


def binary_focal_loss(z: torch.Tensor, y: torch.Tensor, gamma: float, pos_weight: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Mean of -w_y (1 - p_t)^gamma log p_t over the batch (see the module docstring).

    Args:
        z: logits, any shape.
        y: targets in {0, 1}, the shape of ``z``.
        gamma: focusing exponent; 0 gives the class-weighted cross-entropy exactly.
        pos_weight: w_1 (a scalar tensor); None: 1.
    """
    y = y.to(z.dtype)
    log_pt = -nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    focus = (1.0 - log_pt.exp()).clamp_min(0.0) ** gamma
    w = torch.ones_like(z) if pos_weight is None else 1.0 + (pos_weight.to(z.dtype) - 1.0) * y
    return -(w * focus * log_pt).mean()


def make_loss(tc: dict, pos_weight: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``train.loss`` names (``ce`` or ``focal``, checked by the config), from the ``train``
    section ``tc``."""
    if tc["loss"] == "focal":
        gamma = float(tc["focal_gamma"])
        return lambda z, y: binary_focal_loss(z, y, gamma, pos_weight)
    bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    eps = float(tc["label_smoothing"])
    return (lambda z, y: bce(z, y * (1 - eps) + eps / 2)) if eps > 0 else bce
