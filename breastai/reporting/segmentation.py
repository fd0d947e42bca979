"""Segmentation quality: per-image Dice, IoU and HD95 (MONAI's metric functions), and their summary.

Per image (``mask_metrics``), on one pixel grid:

- Dice ``2 |P ∩ T| / (|P| + |T|)``; IoU ``|P ∩ T| / |P ∪ T|`` (0 when the prediction is empty and
  the truth is not).
- HD95: the 95th percentile of the symmetric surface distances between the outlines of P and T,
  in pixels of the grid (``monai.metrics.compute_hausdorff_distance(percentile=95)``). Undefined
  (NaN) when either mask is empty: a missed lesion is counted as such (``missed``), not given an
  invented distance.

An image without a traced lesion (a normal image) has no Dice; what matters there is whether a
lesion was reported on it, which the presence summary counts.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from breastai.reporting.metrics import bootstrap_auc_ci, ece, roc_auc

__all__ = ["mask_metrics", "segmentation_summary"]


def mask_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU and HD95 (pixels) of one predicted mask against the traced one, on the same grid.

    Args:
        pred: predicted mask (H, W), boolean or 0/1.
        truth: traced mask (H, W).

    Returns:
        ``dice``, ``iou`` (NaN when the truth is empty) and ``hd95`` (NaN when either is empty).
    """
    from monai.metrics import compute_hausdorff_distance

    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: predicted {p.shape}, traced {t.shape}")
    if not t.any():
        return {"dice": float("nan"), "iou": float("nan"), "hd95": float("nan")}
    inter, total, union = float((p & t).sum()), float(p.sum() + t.sum()), float((p | t).sum())
    out = {"dice": 2 * inter / total, "iou": inter / union, "hd95": float("nan")}
    if p.any():
        pt = torch.from_numpy(p)[None, None].float()
        tt = torch.from_numpy(t)[None, None].float()
        with warnings.catch_warnings():  # MONAI 1.5 warns about an argument it passes to itself
            warnings.simplefilter("ignore", FutureWarning)
            out["hd95"] = float(compute_hausdorff_distance(pt, tt, percentile=95.0).item())
    return out


def _stat(values: Sequence[float], fn) -> float | None:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    return float(fn(v)) if len(v) else None


def segmentation_summary(rows: Sequence[dict[str, Any]], n_boot: int = 0) -> dict[str, Any]:
    """The summary of per-image rows (``dice``, ``iou``, ``hd95``, ``has_lesion``, ``presence_probability``,
    ``lesion_found``).

    Returns:
        ``n_images``, ``n_lesion``, ``n_normal``; over lesion images ``dice_mean``, ``dice_median``,
        ``iou_mean``, ``hd95_median``, ``hd95_mean`` (over images with a prediction) and ``missed``
        (lesion images where no lesion was found); ``presence_auc`` (lesion against normal images,
        with its bootstrap CI when ``n_boot``) and ``presence_ece``; ``false_lesion_rate``
        (normal images where a lesion was reported). A figure that needs images of a kind the
        rows lack is None.
    """
    lesion = [r for r in rows if r["has_lesion"]]
    normal = [r for r in rows if not r["has_lesion"]]
    y = np.array([int(r["has_lesion"]) for r in rows])
    p = np.array([float(r["presence_probability"]) for r in rows])
    out: dict[str, Any] = {
        "n_images": len(rows), "n_lesion": len(lesion), "n_normal": len(normal),
        "dice_mean": _stat([r["dice"] for r in lesion], np.mean),
        "dice_median": _stat([r["dice"] for r in lesion], np.median),
        "iou_mean": _stat([r["iou"] for r in lesion], np.mean),
        "hd95_median": _stat([r["hd95"] for r in lesion], np.median),
        "hd95_mean": _stat([r["hd95"] for r in lesion], np.mean),
        "missed": int(sum(not r["lesion_found"] for r in lesion)),
        "false_lesion_rate": float(np.mean([r["lesion_found"] for r in normal])) if normal else None,
        "presence_auc": None, "presence_auc_ci": None, "presence_ece": float(ece(y, p)) if len(rows) else None,
    }
    if lesion and normal:
        out["presence_auc"] = roc_auc(y, p)
        if n_boot:
            out["presence_auc_ci"] = list(bootstrap_auc_ci(y, p, n_boot=n_boot))
    return out
