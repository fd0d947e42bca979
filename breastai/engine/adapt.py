"""Batch-norm statistics from a new site's unlabeled images (AdaBN, Li et al. 2016).

A network trained at one hospital normalises each layer with the means and variances of that
hospital's images. Another scanner shifts them (gain, speckle, resolution), and every layer after
the first reads features off-centre. :func:`batchnorm_statistics` re-estimates those running
statistics on the new site's images, preprocessed exactly as the checkpoint scores them, without
labels and without touching a learnt weight; :func:`adapted_checkpoint` puts them into a copy of
the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from breastai.core.keys import Keys
from breastai.engine.loaders import build_dataset
from breastai.engine.loops import _forward, collate
from breastai.models.checkpoint import Checkpoint, model_from_checkpoint

__all__ = ["batchnorm_statistics", "adapted_checkpoint"]

_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _even_batch_size(n: int, at_most: int) -> int:
    """The batch size that splits ``n`` into the fewest batches of near-equal size: the running
    average weights every batch alike, so a last batch of two images would count as much as 32."""
    return math.ceil(n / math.ceil(n / at_most))


@torch.no_grad()
def batchnorm_statistics(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                         batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Every batch-norm layer's running mean and variance over ``records``.

    The records go through the checkpoint's evaluation preset (crop, outline channel, intensity
    normalisation) as in scoring; only the normalisation layers see them in training mode, with a
    cumulative average over the batches, and dropout stays off. Labels are not read.

    Args:
        ckpt: a single-model checkpoint.
        records: the new site's samples (image, and mask or box where the model crops the lesion).
        device: where the model runs.
        batch_size: at most this many images per batch.

    Returns:
        The new buffers, keyed as in the model's state dict.

    Raises:
        ValueError: an ensemble, a model without batch norm, or fewer than two records.
    """
    if ckpt.is_ensemble:
        raise ValueError("batch-norm statistics are per model: adapt each member of the ensemble")
    if len(records) < 2:
        raise ValueError(f"batch-norm statistics need at least 2 images, got {len(records)}")
    model = model_from_checkpoint(ckpt).to(device).eval()
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not norms:
        raise ValueError(f"model {ckpt.model.name} has no batch-norm layer to adapt")
    for m in norms.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches, not an exponential one
        m.train()
    cfg = {**ckpt.config, "data": {**ckpt.config["data"], "cache": "none"}}
    loader = DataLoader(build_dataset(cfg, records, False), batch_size=_even_batch_size(len(records), batch_size),
                        shuffle=False, num_workers=cfg["data"]["num_workers"], collate_fn=collate)
    for batch in loader:
        _forward(model, batch[Keys.IMAGE].to(device), batch, device)
    state = model.state_dict()
    return {f"{name}.{b}": state[f"{name}.{b}"].detach().cpu().clone() for name in norms for b in _BN_BUFFERS}


def adapted_checkpoint(ckpt: Checkpoint, statistics: dict[str, torch.Tensor]) -> Checkpoint:
    """A copy of ``ckpt`` whose batch-norm buffers are ``statistics``; every learnt weight unchanged."""
    unknown = sorted(set(statistics) - set(ckpt.weights))
    if unknown:
        raise KeyError(f"statistics for buffers the checkpoint does not have: {unknown[:3]}")
    return dataclasses.replace(ckpt, weights={**ckpt.weights, **statistics})
