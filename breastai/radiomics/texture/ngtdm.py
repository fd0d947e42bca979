"""Neighbourhood grey tone difference matrix (NGTDM) features, IBSI family IPET.

For each ROI voxel ``k`` with grey level ``i``, ``Xbar_k`` is the mean grey level of its neighbours
within Chebyshev distance ``delta`` (in-plane for 2D/2.5D, 3D otherwise) that lie in the ROI,
excluding the voxel itself; voxels without any ROI neighbour (``W_k = 0``) are left out.
``s_i = sum_k |i - Xbar_k|`` and ``n_i`` the number of such voxels; ``N_vc = sum n_i``;
``p_i = n_i / N_vc``; ``N_gp`` the number of grey levels with ``p_i > 0``. Sums over ``i1, i2`` run
over levels with ``p > 0``. In 2.5D the per-slice ``s_i`` and ``n_i`` are summed before features.

================ =========== ====== ====================================================================
tag              IBSI name   code   formula
================ =========== ====== ====================================================================
ngt_coarseness   Coarseness  QCDE   1 / sum p_i s_i  (10^6 when the sum is 0)
ngt_contrast     Contrast    65HE   [sum p_i1 p_i2 (i1-i2)^2 / (N_gp (N_gp-1))] [sum s_i / N_vc]  (0 if N_gp = 1)
ngt_busyness     Busyness    NQ30   sum p_i s_i / sum |i1 p_i1 - i2 p_i2|  (0 if N_gp = 1)
ngt_complexity   Complexity  HDEZ   sum |i1 - i2| (p_i1 s_i1 + p_i2 s_i2) / (p_i1 + p_i2) / N_vc
ngt_strength     Strength    1X9X   sum (p_i1 + p_i2)(i1 - i2)^2 / sum s_i  (0 if sum s_i = 0)
================ =========== ====== ====================================================================
"""

from __future__ import annotations

import torch

from breastai.radiomics.texture._common import (
    masked_mean,
    padded_neighbours,
    parse_zone_aggregation,
    prepare,
    slice_groups,
)

__all__ = ["FEATURES", "IBSI_CODES", "AGGREGATIONS", "ngtdm_features", "ngtdm_matrices"]

_TABLE = [
    ("ngt_coarseness", "Coarseness", "QCDE"), ("ngt_contrast", "Contrast", "65HE"),
    ("ngt_busyness", "Busyness", "NQ30"), ("ngt_complexity", "Complexity", "HDEZ"),
    ("ngt_strength", "Strength", "1X9X"),
]
FEATURES: dict[str, str] = {tag: name for tag, name, _ in _TABLE}
IBSI_CODES: dict[str, str] = {tag: code for tag, _, code in _TABLE}
AGGREGATIONS = ("2d", "2.5d", "3d")
COARSENESS_MAX = 1.0e6


def ngtdm_matrices(lv: torch.Tensor, n_levels: int, three_d: bool,
                   distance: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(n, s)``, each float64 ``(G, Ng)``, per slice (``G = B * D``) or per lesion (3D)."""
    nb_sum = torch.zeros(lv.shape, dtype=torch.int32, device=lv.device)
    nb_cnt = torch.zeros(lv.shape, dtype=torch.int32, device=lv.device)
    for nb in padded_neighbours(lv, three_d, distance):
        nb_sum += nb
        nb_cnt += nb > 0
    # Voxels without an ROI neighbour get level 0 and land in the dropped level-0 bin.
    lv_ok = lv * (nb_cnt > 0)
    diff = (lv_ok - nb_sum / nb_cnt.clamp_min(1).to(torch.float64)).abs()
    B, D = lv.shape[:2]
    n_groups = B if three_d else B * D
    ng1 = n_levels + 1
    idx = (slice_groups(lv, three_d) * ng1 + lv_ok).reshape(-1)
    size = n_groups * ng1
    n = torch.bincount(idx, minlength=size).to(torch.float64).view(n_groups, ng1)[:, 1:]
    s = torch.bincount(idx, weights=diff.reshape(-1), minlength=size).view(n_groups, ng1)[:, 1:]
    return n.contiguous(), s.contiguous()


def _features(n: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    ng = n.shape[-1]
    nvc = n.sum(-1)
    nan = torch.full_like(nvc, float("nan"))
    p = n / torch.where(nvc > 0, nvc, nan)[:, None]
    lvl = torch.arange(1, ng + 1, dtype=torch.float64, device=n.device)
    present = p > 0
    pair = present[:, :, None] & present[:, None, :]
    ngp = present.sum(-1).to(torch.float64)
    ps = (p * s).sum(-1)
    s_sum = s.sum(-1)
    d = lvl[:, None] - lvl[None, :]
    p1, p2 = p[:, :, None], p[:, None, :]
    zero = torch.zeros_like(p1 * p2)
    contrast_dyn = torch.where(pair, p1 * p2 * d**2, zero).sum((1, 2)) / (ngp * (ngp - 1)).clamp_min(1)
    contrast = torch.where(ngp > 1, contrast_dyn * s_sum / nvc, torch.zeros_like(nvc))
    busy_den = torch.where(pair, (lvl * p)[:, :, None] - (lvl * p)[:, None, :], zero).abs().sum((1, 2))
    busyness = torch.where(ngp > 1, ps / torch.where(busy_den > 0, busy_den, nan), torch.zeros_like(nvc))
    ps1, ps2 = (p * s)[:, :, None], (p * s)[:, None, :]
    cplx = torch.where(pair, d.abs() * (ps1 + ps2) / torch.where(pair, p1 + p2, torch.ones_like(zero)), zero)
    strength_num = torch.where(pair, (p1 + p2) * d**2, zero).sum((1, 2))
    out = {
        "ngt_coarseness": torch.where(ps > 0, 1.0 / torch.where(ps > 0, ps, nan), torch.full_like(ps, COARSENESS_MAX)),
        "ngt_contrast": contrast,
        "ngt_busyness": busyness,
        "ngt_complexity": cplx.sum((1, 2)) / nvc,
        "ngt_strength": torch.where(s_sum > 0, strength_num / torch.where(s_sum > 0, s_sum, nan),
                                    torch.zeros_like(nvc)),
    }
    # Groups without any voxel that has a neighbour have no NGTDM at all.
    return {k: torch.where(nvc > 0, v, nan) for k, v in out.items()}


def ngtdm_features(levels: torch.Tensor, mask: torch.Tensor, n_levels: int, aggregation: str = "2d",
                   distance: int = 1) -> dict[str, torch.Tensor]:
    """IBSI NGTDM features for a batch of lesions.

    Args:
        levels: integer tensor ``(B, D, H, W)`` of grey levels ``1..n_levels`` (ignored outside mask).
        mask: bool tensor ``(B, D, H, W)``, the ROI.
        n_levels: number of discretised grey levels.
        aggregation: ``"2d"`` (per-slice matrices, features averaged over slices; tag suffix ``2D``),
            ``"2.5d"`` (slice matrices merged; ``2_5D``) or ``"3d"`` (26-neighbourhood; ``3D``).
            GLCM-style names are mapped by their dimensionality.
        distance: Chebyshev neighbourhood radius ``delta``.

    Returns:
        Mapping from each tag in :data:`FEATURES` to a float64 tensor ``(B,)``. NaN when no ROI voxel
        has an ROI neighbour (e.g. a single-pixel lesion). A single-level lesion gives coarseness
        ``10^6`` and contrast, busyness, complexity, strength 0, as IBSI prescribes.
    """
    mode = parse_zone_aggregation(aggregation)
    if int(distance) < 1:
        raise ValueError(f"distance must be >= 1, got {distance}")
    lv = prepare(levels, mask, n_levels)
    B, D = lv.shape[:2]
    n, s = ngtdm_matrices(lv, int(n_levels), mode == "3d", int(distance))
    if mode == "2.5d":
        n, s = n.view(B, D, -1).sum(1), s.view(B, D, -1).sum(1)
    feats = _features(n, s)
    if mode != "2d":
        return feats
    valid = (n.sum(-1) > 0).view(B, D)
    return {k: masked_mean(v.view(B, D), valid, (1,)) for k, v in feats.items()}
