"""Neighbouring grey level dependence matrix (NGLDM, a.k.a. GLDM) features, IBSI family REK0.

For each ROI voxel ``k`` with grey level ``i`` the dependence count is
``j_k = 1 + #{neighbours m within Chebyshev distance delta, in the ROI, with |X_m - i| <= alpha}``
(in-plane neighbours for 2D/2.5D, 3D neighbours otherwise). ``s_ij`` counts voxels with grey level
``i`` and dependence ``j``; every ROI voxel counts, so ``N_s = N_v`` (summed when slice matrices are
merged); ``p_ij = s_ij / N_s``; ``s_i.``, ``s_.j`` the marginal sums.

=============== =========================================== ====== =====================================
tag             IBSI name                                   code   formula
=============== =========================================== ====== =====================================
ngl_lde         Low dependence emphasis                     SODN   sum s_.j / j^2 / N_s
ngl_hde         High dependence emphasis                    IMOQ   sum j^2 s_.j / N_s
ngl_lgce        Low grey level count emphasis               TL9H   sum s_i. / i^2 / N_s
ngl_hgce        High grey level count emphasis              OAE7   sum i^2 s_i. / N_s
ngl_ldlge       Low dependence low grey level emphasis      EQ3F   sum s_ij / (i^2 j^2) / N_s
ngl_ldhge       Low dependence high grey level emphasis     JA6D   sum i^2 s_ij / j^2 / N_s
ngl_hdlge       High dependence low grey level emphasis     NBZI   sum j^2 s_ij / i^2 / N_s
ngl_hdhge       High dependence high grey level emphasis    9QMG   sum i^2 j^2 s_ij / N_s
ngl_glnu        Grey level non-uniformity                   FP8K   sum s_i.^2 / N_s
ngl_glnu_norm   Normalised grey level non-uniformity        5SPA   sum s_i.^2 / N_s^2
ngl_dcnu        Dependence count non-uniformity             Z87G   sum s_.j^2 / N_s
ngl_dcnu_norm   Normalised dependence count non-uniformity  OKJI   sum s_.j^2 / N_s^2
ngl_dc_perc     Dependence count percentage                 6XV8   N_s / N_v  (= 1)
ngl_gl_var      Grey level variance                         1PFV   sum (i - mu_i)^2 p_ij, mu_i = sum i p_ij
ngl_dc_var      Dependence count variance                   DNX2   sum (j - mu_j)^2 p_ij, mu_j = sum j p_ij
ngl_dc_entr     Dependence count entropy                    FCBV   -sum p_ij log2 p_ij
ngl_dc_energy   Dependence count energy                     CAS9   sum p_ij^2
=============== =========================================== ====== =====================================
"""

from __future__ import annotations

import torch

from breastai.radiomics.texture._common import (
    SparseGrid,
    index_dtype,
    padded_neighbours,
    parse_zone_aggregation,
    prepare,
    reduce_zone_grid,
    slice_groups,
)

__all__ = ["FEATURES", "IBSI_CODES", "AGGREGATIONS", "ngldm_features", "ngldm_matrices"]

_TABLE = [
    ("ngl_lde", "sje", "Low dependence emphasis", "SODN"), ("ngl_hde", "lje", "High dependence emphasis", "IMOQ"),
    ("ngl_lgce", "lge", "Low grey level count emphasis", "TL9H"),
    ("ngl_hgce", "hge", "High grey level count emphasis", "OAE7"),
    ("ngl_ldlge", "sjlge", "Low dependence low grey level emphasis", "EQ3F"),
    ("ngl_ldhge", "sjhge", "Low dependence high grey level emphasis", "JA6D"),
    ("ngl_hdlge", "ljlge", "High dependence low grey level emphasis", "NBZI"),
    ("ngl_hdhge", "ljhge", "High dependence high grey level emphasis", "9QMG"),
    ("ngl_glnu", "glnu", "Grey level non-uniformity", "FP8K"),
    ("ngl_glnu_norm", "glnu_norm", "Normalised grey level non-uniformity", "5SPA"),
    ("ngl_dcnu", "jnu", "Dependence count non-uniformity", "Z87G"),
    ("ngl_dcnu_norm", "jnu_norm", "Normalised dependence count non-uniformity", "OKJI"),
    ("ngl_dc_perc", "perc", "Dependence count percentage", "6XV8"),
    ("ngl_gl_var", "gl_var", "Grey level variance", "1PFV"),
    ("ngl_dc_var", "j_var", "Dependence count variance", "DNX2"),
    ("ngl_dc_entr", "entr", "Dependence count entropy", "FCBV"),
    ("ngl_dc_energy", "energy", "Dependence count energy", "CAS9"),
]
FEATURES: dict[str, str] = {tag: name for tag, _, name, _ in _TABLE}
IBSI_CODES: dict[str, str] = {tag: code for tag, _, _, code in _TABLE}
AGGREGATIONS = ("2d", "2.5d", "3d")


def ngldm_matrices(lv: torch.Tensor, n_levels: int, three_d: bool, distance: int = 1,
                   alpha: int = 0) -> tuple[SparseGrid, torch.Tensor]:
    """Sparse NGLDM per slice (``B * D`` groups) or per lesion (3D), and ROI voxels per group."""
    dep = torch.ones(lv.shape, dtype=torch.int32, device=lv.device)
    for nb in padded_neighbours(lv, three_d, distance):
        dep += (nb > 0) & ((nb - lv).abs() <= alpha)
    B, D = lv.shape[:2]
    n_groups = B if three_d else B * D
    ng1 = n_levels + 1
    n_dep = (2 * distance + 1) ** (3 if three_d else 2)
    size = n_groups * ng1 * n_dep
    dt = index_dtype(size)
    grp = slice_groups(lv, three_d, dt)
    # Level 0 (outside the ROI) goes to row 0, which is dropped.
    idx = ((grp * ng1 + lv.to(dt)) * n_dep + dep.to(dt) - 1).reshape(-1)
    dense = torch.bincount(idx, minlength=size).view(n_groups, ng1, n_dep)[:, 1:]
    nv = torch.bincount(grp.reshape(-1), weights=(lv > 0).reshape(-1).to(torch.float64), minlength=n_groups)
    return SparseGrid.from_dense(dense), nv


def ngldm_features(levels: torch.Tensor, mask: torch.Tensor, n_levels: int, aggregation: str = "2d",
                   distance: int = 1, alpha: int = 0) -> dict[str, torch.Tensor]:
    """IBSI NGLDM features for a batch of lesions.

    Args:
        levels: integer tensor ``(B, D, H, W)`` of grey levels ``1..n_levels`` (ignored outside mask).
        mask: bool tensor ``(B, D, H, W)``, the ROI.
        n_levels: number of discretised grey levels.
        aggregation: ``"2d"`` (per-slice matrices, features averaged over slices; tag suffix ``2D``),
            ``"2.5d"`` (slice matrices merged; ``2_5D``) or ``"3d"`` (``3D``). GLCM-style names are
            mapped by their dimensionality.
        distance: Chebyshev neighbourhood radius ``delta``.
        alpha: coarseness parameter; neighbours with ``|level difference| <= alpha`` are dependent.

    Returns:
        Mapping from each tag in :data:`FEATURES` to a float64 tensor ``(B,)``; NaN for an empty ROI.
    """
    mode = parse_zone_aggregation(aggregation)
    if int(distance) < 1 or int(alpha) < 0:
        raise ValueError(f"need distance >= 1 and alpha >= 0, got distance={distance}, alpha={alpha}")
    lv = prepare(levels, mask, n_levels)
    grid, nv = ngldm_matrices(lv, int(n_levels), mode == "3d", int(distance), int(alpha))
    f = reduce_zone_grid(grid, nv, mode, lv.shape[0])
    return {tag: f[key] for tag, key, _, _ in _TABLE}
