"""Grey level run length matrix (GLRLM) features, IBSI family TP0I.

A run is a maximal sequence of consecutive ROI voxels with the same grey level along a direction
vector ``m`` (4 in-plane directions in 2D, 13 in 3D; ``m`` and ``-m`` give the same runs). Runs
stop at the ROI border. ``r_ij`` counts runs of grey level ``i`` and length ``j``;
``N_s = sum r_ij``; ``N_v`` the number of ROI voxels (summed over merged matrices, as IBSI
requires); ``p_ij = r_ij / N_s``; ``r_i.``, ``r_.j`` the marginal sums.

=============== ===================================== ====== =====================================
tag             IBSI name                             code   formula
=============== ===================================== ====== =====================================
rlm_sre         Short runs emphasis                   22OV   sum r_.j / j^2 / N_s
rlm_lre         Long runs emphasis                    W4KF   sum j^2 r_.j / N_s
rlm_lgre        Low grey level run emphasis           V3SW   sum r_i. / i^2 / N_s
rlm_hgre        High grey level run emphasis          G3QZ   sum i^2 r_i. / N_s
rlm_srlge       Short run low grey level emphasis     HTZT   sum r_ij / (i^2 j^2) / N_s
rlm_srhge       Short run high grey level emphasis    GD3A   sum i^2 r_ij / j^2 / N_s
rlm_lrlge       Long run low grey level emphasis      IVPO   sum j^2 r_ij / i^2 / N_s
rlm_lrhge       Long run high grey level emphasis     3KUM   sum i^2 j^2 r_ij / N_s
rlm_glnu        Grey level non-uniformity             R5YN   sum r_i.^2 / N_s
rlm_glnu_norm   Normalised grey level non-uniformity  OVBL   sum r_i.^2 / N_s^2
rlm_rlnu        Run length non-uniformity             W92Y   sum r_.j^2 / N_s
rlm_rlnu_norm   Normalised run length non-uniformity  IC23   sum r_.j^2 / N_s^2
rlm_r_perc      Run percentage                        9ZK5   N_s / N_v
rlm_gl_var      Grey level variance                   8CE5   sum (i - mu_i)^2 p_ij, mu_i = sum i p_ij
rlm_rl_var      Run length variance                   SXLW   sum (j - mu_j)^2 p_ij, mu_j = sum j p_ij
rlm_rl_entr     Run entropy                           HJ9O   -sum p_ij log2 p_ij
=============== ===================================== ====== =====================================
"""

from __future__ import annotations

import torch

from breastai.radiomics.texture._common import (
    DIRECTIONS_2D,
    DIRECTIONS_3D,
    SparseGrid,
    grid_features,
    in_batch_chunks,
    index_dtype,
    lines_along,
    nonzero_1d,
    parse_directional_aggregation,
    prepare,
    reduce_directional,
    slice_groups,
)

__all__ = ["FEATURES", "IBSI_CODES", "AGGREGATIONS", "glrlm_features", "glrlm_matrices"]

_TABLE = [
    ("rlm_sre", "sje", "Short runs emphasis", "22OV"), ("rlm_lre", "lje", "Long runs emphasis", "W4KF"),
    ("rlm_lgre", "lge", "Low grey level run emphasis", "V3SW"),
    ("rlm_hgre", "hge", "High grey level run emphasis", "G3QZ"),
    ("rlm_srlge", "sjlge", "Short run low grey level emphasis", "HTZT"),
    ("rlm_srhge", "sjhge", "Short run high grey level emphasis", "GD3A"),
    ("rlm_lrlge", "ljlge", "Long run low grey level emphasis", "IVPO"),
    ("rlm_lrhge", "ljhge", "Long run high grey level emphasis", "3KUM"),
    ("rlm_glnu", "glnu", "Grey level non-uniformity", "R5YN"),
    ("rlm_glnu_norm", "glnu_norm", "Normalised grey level non-uniformity", "OVBL"),
    ("rlm_rlnu", "jnu", "Run length non-uniformity", "W92Y"),
    ("rlm_rlnu_norm", "jnu_norm", "Normalised run length non-uniformity", "IC23"),
    ("rlm_r_perc", "perc", "Run percentage", "9ZK5"),
    ("rlm_gl_var", "gl_var", "Grey level variance", "8CE5"),
    ("rlm_rl_var", "j_var", "Run length variance", "SXLW"),
    ("rlm_rl_entr", "entr", "Run entropy", "HJ9O"),
]
FEATURES: dict[str, str] = {tag: name for tag, _, name, _ in _TABLE}
IBSI_CODES: dict[str, str] = {tag: code for tag, _, _, code in _TABLE}
AGGREGATIONS = ("2d_avg", "2d_merged", "2.5d_d_merged", "2.5d_v_merged", "3d_avg", "3d_merged")


def glrlm_matrices(lv: torch.Tensor, n_levels: int, three_d: bool) -> torch.Tensor:
    """Run length counts from a masked level image ``lv`` (0 outside the ROI).

    Returns float64 ``(B, D, 4, Ng, Lmax)`` (per slice, in-plane direction) when ``three_d`` is
    False, else ``(B, 13, Ng, Lmax)``; column ``c`` holds run length ``c + 1``.
    """
    B, D, H, W = lv.shape
    ng1 = n_levels + 1
    dirs = DIRECTIONS_3D if three_d else DIRECTIONS_2D
    lmax = max(D, H, W) if three_d else max(H, W)
    n_grp = B if three_d else B * D
    size = n_grp * ng1 * lmax
    dt = index_dtype(size)
    # Code each ROI voxel by (group, level) so that a run's matrix row is read off its first voxel
    # without any division; 0 still means outside the ROI. Neighbours on a line always share the
    # group, so equal codes mean equal levels.
    code = (slice_groups(lv, three_d, dt) * ng1 + lv.to(dt)) * (lv > 0)
    no_link = torch.ones((B, 1), dtype=torch.bool, device=lv.device)
    out = []
    for d in dirs:
        v, linked = lines_along(code, d)
        valid = v > 0
        # Consecutive voxels of a line with equal codes belong to the same run (for an ROI voxel,
        # equal code implies the neighbour is in the ROI too); runs begin where that link is
        # missing before the voxel and end where it is missing after it.
        link = (v[:, 1:] == v[:, :-1]) & linked
        start = valid & torch.cat([no_link, ~link], dim=1)
        end = valid & torch.cat([~link, no_link], dim=1)
        s_pos = nonzero_1d(start.reshape(-1))
        e_pos = nonzero_1d(end.reshape(-1))
        idx = v.reshape(-1)[s_pos].to(torch.int64) * lmax + (e_pos - s_pos)
        cnt = torch.bincount(idx, minlength=size).view(n_grp, ng1, lmax)[:, 1:]
        out.append(cnt.to(torch.float64))
    mats = torch.stack(out, dim=1)
    return mats if three_d else mats.view(B, D, len(dirs), n_levels, lmax)


def _features(m: torch.Tensor, nv: torch.Tensor) -> dict[str, torch.Tensor]:
    lead = m.shape[:-2]
    grid = SparseGrid.from_dense(m.reshape(-1, *m.shape[-2:]))
    f = grid_features(grid, nv.reshape(-1))
    return {tag: f[key].view(lead) for tag, key, _, _ in _TABLE}


def glrlm_features(levels: torch.Tensor, mask: torch.Tensor, n_levels: int,
                   aggregation: str = "2d_avg", distance: int = 1) -> dict[str, torch.Tensor]:
    """IBSI GLRLM features for a batch of lesions.

    Args:
        levels: integer tensor ``(B, D, H, W)`` of grey levels ``1..n_levels`` (ignored outside mask).
        mask: bool tensor ``(B, D, H, W)``, the ROI.
        n_levels: number of discretised grey levels.
        aggregation: ``"2d_avg"``, ``"2d_merged"``, ``"2.5d_d_merged"``, ``"2.5d_v_merged"``,
            ``"3d_avg"`` or ``"3d_merged"`` (same meaning and accepted IBSI tag suffixes as
            :func:`breastai.radiomics.texture.glcm.glcm_features`).
        distance: accepted for a uniform call signature across families; only the IBSI default
            ``1`` is supported (runs / zone linkage use immediate neighbours).

    Returns:
        Mapping from each tag in :data:`FEATURES` to a float64 tensor ``(B,)``; NaN for an empty ROI.
    """
    mode = parse_directional_aggregation(aggregation)
    if int(distance) != 1:
        raise ValueError(f"GLRLM supports only distance=1, got {distance}")
    lv = prepare(levels, mask, n_levels)
    three_d = mode.startswith("3d")

    def run(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
        mats = glrlm_matrices(chunk, int(n_levels), three_d)
        nv = (chunk > 0).sum((2, 3)) if not three_d else (chunk > 0).sum((1, 2, 3))
        return reduce_directional(mats, nv, mode, _features)

    n_mats = len(DIRECTIONS_3D) if three_d else lv.shape[1] * len(DIRECTIONS_2D)
    return in_batch_chunks(run, lv, n_mats * (int(n_levels) + 1) * max(lv.shape[1:]))
