"""IBSI intensity discretisation and re-segmentation, batched over lesions.

All functions take ``values`` (float tensor ``(B, D, H, W)``) and ``mask`` (bool tensor of the
same shape); statistics such as the ROI minimum are computed per lesion inside its mask only.
Grey levels are integers ``1..Ng`` inside the mask and ``0`` outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Discretised", "discretise", "resegment", "masked_min_max", "METHODS"]

METHODS = ("fbn", "fbs", "none")


@dataclass
class Discretised:
    """Result of :func:`discretise`.

    Attributes:
        levels: int64 ``(B, D, H, W)``; grey level ``1..n_levels`` inside the mask, 0 outside.
        n_levels: largest grey level of the batch (``n_bins`` for FBN).
        hist_lo: ``(B,)`` first grey level of each lesion's histogram range (IBSI ``min(G)``).
        hist_hi: ``(B,)`` last grey level of each lesion's histogram range.
        ivh_values: float ``(B, D, H, W)``; the intensities the intensity-volume histogram uses
            (bin centres for FBS, bin numbers for FBN, the raw values for ``none``).
        ivh_lo: ``(B,)`` lower end of the IVH range ``G``.
        ivh_hi: ``(B,)`` upper end of the IVH range ``G``.
        ivh_step: ``(B,)`` discretisation interval ``w_d`` of the IVH.
    """

    levels: torch.Tensor
    n_levels: int
    hist_lo: torch.Tensor
    hist_hi: torch.Tensor
    ivh_values: torch.Tensor
    ivh_lo: torch.Tensor
    ivh_hi: torch.Tensor
    ivh_step: torch.Tensor


def masked_min_max(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-lesion minimum and maximum of ``values`` inside ``mask`` (shape ``(B,)`` each)."""
    flat = values.flatten(1)
    m = mask.flatten(1)
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    lo = torch.where(m, flat, inf).amin(1)
    hi = torch.where(m, flat, -inf).amax(1)
    return lo, hi


def resegment(
    values: torch.Tensor, mask: torch.Tensor, lower: float | None = None, upper: float | None = None
) -> torch.Tensor:
    """IBSI range re-segmentation: keep mask voxels with ``lower <= value <= upper``.

    Either bound may be ``None`` (half-open range). Returns the new intensity mask.
    """
    out = mask.clone()
    if lower is not None:
        out &= values >= lower
    if upper is not None:
        out &= values <= upper
    return out


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def discretise(
    values: torch.Tensor,
    mask: torch.Tensor,
    method: str = "fbn",
    n_bins: int = 32,
    bin_width: float | None = None,
    min_bound: float | None = None,
) -> Discretised:
    """Discretise intensities inside the ROI of every lesion.

    IBSI fixed bin number (FBN, identifier K15C)::

        X_d = floor(Ng * (X - X_min) / (X_max - X_min)) + 1,   X = X_max -> Ng

    with ``X_min``/``X_max`` the lesion's ROI minimum and maximum (a constant ROI maps to 1).

    IBSI fixed bin size (FBS, identifier Q3RU)::

        X_d = floor((X - X_min_bound) / w_b) + 1

    with ``X_min_bound`` the lower re-segmentation bound (``min_bound``) or else the ROI minimum.

    ``none`` keeps integer intensities as grey levels (e.g. the IBSI digital phantom); they must
    be integral and at least 1 inside the ROI.

    Args:
        values: float ``(B, D, H, W)``.
        mask: bool ``(B, D, H, W)`` (the ROI intensity mask).
        method: ``"fbn"``, ``"fbs"`` or ``"none"``.
        n_bins: number of bins for FBN.
        bin_width: bin width for FBS.
        min_bound: lower re-segmentation bound used as ``X_min_bound`` by FBS.

    Raises:
        ValueError: unknown method, missing or non-positive ``bin_width`` for FBS, ``n_bins < 1``,
            or non-integral / sub-1 intensities for ``none``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown discretisation {method!r}; choose one of {METHODS}")
    lo, hi = masked_min_max(values, mask)
    B = values.shape[0]
    ones = torch.ones(B, dtype=values.dtype, device=values.device)
    if method == "fbn":
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        span = (hi - lo).clamp_min(torch.finfo(values.dtype).tiny)
        x = (values - _expand(lo, values)) / _expand(span, values)
        lev = torch.floor(n_bins * x).to(torch.int64) + 1
        lev = lev.clamp(1, n_bins)  # X_max lands on Ng; a constant ROI on 1
        n_levels = int(n_bins)
        hist_lo, hist_hi = ones, ones * n_bins
        ivh_values = lev.to(values.dtype)
        ivh_lo, ivh_hi, step = ones, ones * n_bins, ones
    elif method == "fbs":
        if bin_width is None or not bin_width > 0:
            raise ValueError(f"fixed bin size discretisation needs bin_width > 0, got {bin_width}")
        base = lo if min_bound is None else torch.full_like(lo, float(min_bound))
        lev = torch.floor((values - _expand(base, values)) / bin_width).to(torch.int64) + 1
        lev = lev.clamp_min(1)
        top = torch.where(mask, lev, torch.zeros_like(lev)).flatten(1).amax(1)
        n_levels = int(top.max()) if B else 1
        hist_lo, hist_hi = ones, top.to(values.dtype)
        ivh_values = _expand(base, values) + (lev.to(values.dtype) - 0.5) * bin_width
        ivh_lo = base + 0.5 * bin_width
        ivh_hi = base + (top.to(values.dtype) - 0.5) * bin_width
        step = ones * bin_width
    else:
        sel = values[mask]
        if sel.numel() and (torch.any(sel != torch.round(sel)) or torch.any(sel < 1)):
            raise ValueError("discretisation 'none' needs integer intensities >= 1 inside the ROI")
        lev = torch.round(values).to(torch.int64).clamp_min(0)
        n_levels = int(hi.max()) if B else 1
        hist_lo, hist_hi = lo, hi
        ivh_values = values
        ivh_lo, ivh_hi, step = lo, hi, ones
    lev = torch.where(mask, lev, torch.zeros_like(lev))
    return Discretised(lev, n_levels, hist_lo, hist_hi, ivh_values, ivh_lo, ivh_hi, step)
