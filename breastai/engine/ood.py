"""Fitting a checkpoint's out-of-distribution detector (:mod:`breastai.models.ood`) on its own parts.

Training fits it right after the epoch is selected (:func:`fit_detector`). A checkpoint trained
before the detector existed can get one afterwards from its training datalist
(:func:`refit_detector`): its training and validation rows are found again by the image digests
the checkpoint keeps (``seen_images``), so the detector is the one training would have fitted.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from breastai.core.config import DEFAULTS
from breastai.data.provenance import file_digest
from breastai.engine.loaders import build_dataset, make_loader
from breastai.engine.loops import predict_loader
from breastai.models.checkpoint import Checkpoint, CheckpointError, model_from_checkpoint
from breastai.models.ood import FeatureDensity, fit_feature_density
from breastai.models.registry import get_spec

__all__ = ["fit_detector", "refit_detector"]


def fit_detector(cfg: dict[str, Any], model: nn.Module, train: torch.utils.data.DataLoader,
                 val: torch.utils.data.DataLoader, device: torch.device, **run_kw: Any) -> FeatureDensity:
    """The detector of ``model``: Gaussians of the training part's features (evaluation preset, no
    augmentation), scales and threshold from the validation part's, at ``eval.ood_quantile``, the
    flag at ``eval.ood_margin`` times the threshold.

    ``run_kw`` are :func:`~breastai.engine.loops.predict_loader` options (``amp``, ``flip``, ...).
    """
    layers = get_spec(cfg["model"]["name"]).feature_layers(cfg["model"].get("backbone"))
    fitted = predict_loader(model, train, device, features=layers, **run_kw)
    held = predict_loader(model, val, device, features=layers, **run_kw)
    return fit_feature_density(fitted["features"], fitted["label"], held["features"],
                               float(cfg["eval"]["ood_quantile"]), layers, float(cfg["eval"]["ood_margin"]))


def refit_detector(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                   quantile: float | None = None, margin: float | None = None) -> FeatureDensity:
    """Fit the detector of a trained checkpoint from its training datalist's ``records``.

    Args:
        ckpt: a single-model checkpoint that keeps the digests of its training and validation images.
        records: datalist records holding (at least) those images.
        device: where the model runs.
        quantile: the threshold's validation quantile (default: the checkpoint's ``eval.ood_quantile``).
        margin: the flag's margin (default: the checkpoint's ``eval.ood_margin``, else the built-in one).

    Raises:
        CheckpointError: an ensemble, or a checkpoint without image digests.
        ValueError: the records hold too few of its training or validation images.
    """
    if ckpt.is_ensemble:
        raise CheckpointError("an ensemble has no detector of its own: fit one for each member's checkpoint")
    if not ckpt.seen_images:
        raise CheckpointError("the checkpoint keeps no digests of its training images, so its parts cannot be found")
    digests = [file_digest(r["image"]) for r in records]
    parts = {k: [r for r, d in zip(records, digests) if d in set(ckpt.seen_images.get(k, []))] for k in ("train", "val")}
    for k, rows in parts.items():
        if len(rows) < len(set(ckpt.seen_images.get(k, []))) * 0.9:
            raise ValueError(f"the datalist holds {len(rows)} of the checkpoint's {len(ckpt.seen_images[k])} {k} images: "
                             "give the datalist it was trained on")
    cfg = {**ckpt.config, "data": {**ckpt.config["data"], "cache": "none"}}
    ev = {**DEFAULTS["eval"], **cfg["eval"]}  # a checkpoint older than the detector lacks its settings
    if quantile is not None:
        ev["ood_quantile"] = float(quantile)
    if margin is not None:
        ev["ood_margin"] = float(margin)
    cfg = {**cfg, "eval": ev}
    model = model_from_checkpoint(ckpt).to(device).eval()
    loaders = [make_loader(build_dataset(cfg, parts[k], False), cfg, False, None, 0) for k in ("train", "val")]
    return fit_detector(cfg, model, *loaders, device, flip=bool(cfg["eval"]["flip_average"]))
