"""Grey level co-occurrence matrix (GLCM) features, IBSI family LFYI.

For each direction vector ``m`` (4 in-plane directions in 2D, 13 in 3D, scaled by the Chebyshev
``distance``) the matrix ``M_m`` counts grey level pairs ``(i, j)`` of neighbouring ROI voxels along
``m`` and ``-m``, so ``M_m = M_m+ + M_m+^T`` is symmetric. ``p_ij = M_ij / sum M``; ``p_i.`` the
row marginal; ``p_{i-j,k} = sum p_ij [|i-j| = k]``; ``p_{i+j,k} = sum p_ij [i+j = k]``;
``mu = sum_i i p_i.``; ``N_g = n_levels``; logarithms are base 2.

===================== ===================================== ====== ===========================================
tag                   IBSI name                             code   formula
===================== ===================================== ====== ===========================================
cm_joint_max          Joint maximum                         GYBY   max p_ij
cm_joint_avg          Joint average                         60VM   sum i p_ij
cm_joint_var          Joint variance                        UR99   sum (i - mu)^2 p_ij
cm_joint_entr         Joint entropy                         TU9B   -sum p_ij log2 p_ij
cm_diff_avg           Difference average                    TF7R   sum k p_{i-j,k}
cm_diff_var           Difference variance                   D3YU   sum (k - diff_avg)^2 p_{i-j,k}
cm_diff_entr          Difference entropy                    NTRS   -sum p_{i-j,k} log2 p_{i-j,k}
cm_sum_avg            Sum average                           ZGXS   sum k p_{i+j,k}
cm_sum_var            Sum variance                          OEEB   sum (k - sum_avg)^2 p_{i+j,k}
cm_sum_entr           Sum entropy                           P6QZ   -sum p_{i+j,k} log2 p_{i+j,k}
cm_energy             Angular second moment                 8ZQL   sum p_ij^2
cm_contrast           Contrast                              ACUI   sum (i - j)^2 p_ij
cm_dissimilarity      Dissimilarity                         8S9J   sum |i - j| p_ij
cm_inv_diff           Inverse difference                    IB1Z   sum p_ij / (1 + |i - j|)
cm_inv_diff_norm      Normalised inverse difference         NDRX   sum p_ij / (1 + |i - j| / N_g)
cm_inv_diff_mom       Inverse difference moment             WF0Z   sum p_ij / (1 + (i - j)^2)
cm_inv_diff_mom_norm  Normalised inverse difference moment  1QCO   sum p_ij / (1 + (i - j)^2 / N_g^2)
cm_inv_var            Inverse variance                      E8JP   sum_{k>=1} p_{i-j,k} / k^2
cm_corr               Correlation                           NI2N   (sum i j p_ij - mu^2) / sigma^2
cm_auto_corr          Autocorrelation                       QWB0   sum i j p_ij
cm_clust_tend         Cluster tendency                      DG8W   sum (i + j - 2 mu)^2 p_ij
cm_clust_shade        Cluster shade                         7NFM   sum (i + j - 2 mu)^3 p_ij
cm_clust_prom         Cluster prominence                    AE86   sum (i + j - 2 mu)^4 p_ij
cm_info_corr1         Information correlation 1             R8DG   (HXY - HXY1) / HX
cm_info_corr2         Information correlation 2             JN9H   sqrt(1 - exp(-2 (HXY2 - HXY)))
===================== ===================================== ====== ===========================================

with ``sigma^2 = sum_i (i - mu)^2 p_i.``, ``HXY = -sum p_ij log2 p_ij``, ``HX = -sum p_i. log2 p_i.``,
``HXY1 = -sum p_ij log2(p_i. p_.j)``, ``HXY2 = -sum p_i. p_.j log2(p_i. p_.j)``.
A lesion with a single grey level has ``sigma = HX = 0``: correlation and information correlation 1
are then NaN (0/0); all other features are finite.
"""

from __future__ import annotations

import torch

from breastai.radiomics.texture._common import (
    DIRECTIONS_2D,
    DIRECTIONS_3D,
    in_batch_chunks,
    index_dtype,
    parse_directional_aggregation,
    prepare,
    reduce_directional,
    shifted_views,
    slice_groups,
)

__all__ = ["FEATURES", "IBSI_CODES", "AGGREGATIONS", "glcm_features", "glcm_matrices"]

_TABLE = [
    ("cm_joint_max", "Joint maximum", "GYBY"), ("cm_joint_avg", "Joint average", "60VM"),
    ("cm_joint_var", "Joint variance", "UR99"), ("cm_joint_entr", "Joint entropy", "TU9B"),
    ("cm_diff_avg", "Difference average", "TF7R"), ("cm_diff_var", "Difference variance", "D3YU"),
    ("cm_diff_entr", "Difference entropy", "NTRS"), ("cm_sum_avg", "Sum average", "ZGXS"),
    ("cm_sum_var", "Sum variance", "OEEB"), ("cm_sum_entr", "Sum entropy", "P6QZ"),
    ("cm_energy", "Angular second moment", "8ZQL"), ("cm_contrast", "Contrast", "ACUI"),
    ("cm_dissimilarity", "Dissimilarity", "8S9J"), ("cm_inv_diff", "Inverse difference", "IB1Z"),
    ("cm_inv_diff_norm", "Normalised inverse difference", "NDRX"),
    ("cm_inv_diff_mom", "Inverse difference moment", "WF0Z"),
    ("cm_inv_diff_mom_norm", "Normalised inverse difference moment", "1QCO"),
    ("cm_inv_var", "Inverse variance", "E8JP"), ("cm_corr", "Correlation", "NI2N"),
    ("cm_auto_corr", "Autocorrelation", "QWB0"), ("cm_clust_tend", "Cluster tendency", "DG8W"),
    ("cm_clust_shade", "Cluster shade", "7NFM"), ("cm_clust_prom", "Cluster prominence", "AE86"),
    ("cm_info_corr1", "Information correlation 1", "R8DG"),
    ("cm_info_corr2", "Information correlation 2", "JN9H"),
]
FEATURES: dict[str, str] = {tag: name for tag, name, _ in _TABLE}
IBSI_CODES: dict[str, str] = {tag: code for tag, _, code in _TABLE}
AGGREGATIONS = ("2d_avg", "2d_merged", "2.5d_d_merged", "2.5d_v_merged", "3d_avg", "3d_merged")


def glcm_matrices(lv: torch.Tensor, n_levels: int, three_d: bool, distance: int = 1) -> torch.Tensor:
    """Symmetric co-occurrence counts from a masked level image ``lv`` (0 outside the ROI).

    Returns float64 ``(B, D, 4, Ng, Ng)`` per slice and in-plane direction when ``three_d`` is
    False, else ``(B, 13, Ng, Ng)`` per 3D direction.
    """
    B, D = lv.shape[:2]
    ng1 = n_levels + 1
    dirs = DIRECTIONS_3D if three_d else DIRECTIONS_2D
    n_grp = B if three_d else B * D
    size = n_grp * ng1 * ng1
    dt = index_dtype(size)
    lvx = lv.to(dt)
    # Bin of the first voxel of a pair, including grey level 0 (= outside the ROI); pairs touching
    # the outside land in row/column 0, which is dropped, so no masked indexing is needed.
    base = (slice_groups(lv, three_d, dt) * ng1 + lvx) * ng1
    out = []
    for d in dirs:
        off = tuple(distance * c for c in d)
        idx = shifted_views(base, off)[0] + shifted_views(lvx, off)[1]
        cnt = torch.bincount(idx.reshape(-1), minlength=size).view(n_grp, ng1, ng1)[:, 1:, 1:]
        cnt = cnt.to(torch.float64)
        out.append(cnt + cnt.transpose(1, 2))
    mats = torch.stack(out, dim=1)  # (n_grp, K, ng, ng)
    return mats if three_d else mats.view(B, D, len(dirs), n_levels, n_levels)


def _features(m: torch.Tensor, nv: torch.Tensor) -> dict[str, torch.Tensor]:
    """GLCM features on count matrices of any leading shape ``(..., Ng, Ng)``."""
    ng = m.shape[-1]
    dev = m.device
    tot = m.sum((-2, -1))
    p = m / torch.where(tot > 0, tot, torch.full_like(tot, float("nan")))[..., None, None]
    lvl = torch.arange(1, ng + 1, dtype=torch.float64, device=dev)
    i, j = lvl.view(-1, 1), lvl.view(1, -1)
    diff = (i - j).abs()
    pi = p.sum(-1)
    mu = (pi * lvl).sum(-1)

    def s2(x: torch.Tensor) -> torch.Tensor:
        return x.sum((-2, -1))

    def xlog2x(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x * torch.log2(torch.where(x > 0, x, torch.ones_like(x))), torch.zeros_like(x))

    k_d = torch.arange(ng, dtype=torch.float64, device=dev)
    k_s = torch.arange(2, 2 * ng + 1, dtype=torch.float64, device=dev)
    onehot_d = (diff.reshape(-1, 1) == k_d.view(1, -1)).to(torch.float64)
    onehot_s = ((i + j).reshape(-1, 1) == k_s.view(1, -1)).to(torch.float64)
    flat = p.flatten(-2)
    p_d = flat @ onehot_d
    p_s = flat @ onehot_s
    diff_avg = (p_d * k_d).sum(-1)
    sum_avg = (p_s * k_s).sum(-1)
    var = (pi * (lvl - mu[..., None]) ** 2).sum(-1)
    hxy = -s2(xlog2x(p))
    hx = -xlog2x(pi).sum(-1)
    pipj = pi[..., :, None] * pi[..., None, :]
    log_pipj = torch.log2(torch.where(pipj > 0, pipj, torch.ones_like(pipj)))
    hxy1 = -s2(p * log_pipj)
    hxy2 = -s2(xlog2x(pipj))
    cl = i + j - 2 * mu[..., None, None]
    inv_var_w = torch.where(k_d > 0, 1.0 / k_d.clamp_min(1) ** 2, torch.zeros_like(k_d))
    return {
        "cm_joint_max": p.flatten(-2).amax(-1),
        "cm_joint_avg": mu,
        "cm_joint_var": var,
        "cm_joint_entr": hxy,
        "cm_diff_avg": diff_avg,
        "cm_diff_var": (p_d * (k_d - diff_avg[..., None]) ** 2).sum(-1),
        "cm_diff_entr": -xlog2x(p_d).sum(-1),
        "cm_sum_avg": sum_avg,
        "cm_sum_var": (p_s * (k_s - sum_avg[..., None]) ** 2).sum(-1),
        "cm_sum_entr": -xlog2x(p_s).sum(-1),
        "cm_energy": s2(p**2),
        "cm_contrast": s2(p * diff**2),
        "cm_dissimilarity": s2(p * diff),
        "cm_inv_diff": s2(p / (1 + diff)),
        "cm_inv_diff_norm": s2(p / (1 + diff / ng)),
        "cm_inv_diff_mom": s2(p / (1 + diff**2)),
        "cm_inv_diff_mom_norm": s2(p / (1 + diff**2 / ng**2)),
        "cm_inv_var": (p_d * inv_var_w).sum(-1),
        "cm_corr": (s2(p * i * j) - mu**2) / var,
        "cm_auto_corr": s2(p * i * j),
        "cm_clust_tend": s2(p * cl**2),
        "cm_clust_shade": s2(p * cl**3),
        "cm_clust_prom": s2(p * cl**4),
        "cm_info_corr1": (hxy - hxy1) / hx,
        "cm_info_corr2": torch.sqrt((1 - torch.exp(-2 * (hxy2 - hxy))).clamp_min(0)),
    }


def glcm_features(levels: torch.Tensor, mask: torch.Tensor, n_levels: int, aggregation: str = "2d_avg",
                  distance: int = 1) -> dict[str, torch.Tensor]:
    """IBSI GLCM features for a batch of lesions.

    Args:
        levels: integer tensor ``(B, D, H, W)`` of grey levels ``1..n_levels`` (ignored outside mask).
        mask: bool tensor ``(B, D, H, W)``, the ROI.
        n_levels: number of discretised grey levels ``N_g`` (matrix size).
        aggregation: ``"2d_avg"`` (features per slice and direction, averaged; IBSI 2D averaged,
            tag suffix ``2D_avg``), ``"2d_merged"`` (directions merged per slice, averaged over
            slices; ``2D_comb``/``2D_s_mrg``), ``"2.5d_d_merged"`` (each direction merged over slices,
            averaged over directions; ``2_5D_avg``/``2.5D_d_mrg``), ``"2.5d_v_merged"`` (everything
            merged; ``2_5D_comb``/``2.5D_v_mrg``), ``"3d_avg"`` (13 3D directions averaged;
            ``3D_avg``) or ``"3d_merged"`` (``3D_comb``/``3D_v_mrg``). Reference tag suffixes are
            accepted as well.
        distance: Chebyshev distance ``delta`` between co-occurring voxels.

    Returns:
        Mapping from each tag in :data:`FEATURES` to a float64 tensor ``(B,)``. A lesion without any
        neighbouring voxel pair gets NaN.
    """
    mode = parse_directional_aggregation(aggregation)
    if int(distance) < 1:
        raise ValueError(f"distance must be >= 1, got {distance}")
    lv = prepare(levels, mask, n_levels)
    three_d = mode.startswith("3d")

    def run(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
        mats = glcm_matrices(chunk, int(n_levels), three_d, int(distance))
        nv = (chunk > 0).sum((2, 3)) if not three_d else (chunk > 0).sum((1, 2, 3))
        return reduce_directional(mats, nv, mode, _features)

    n_mats = len(DIRECTIONS_3D) if three_d else lv.shape[1] * len(DIRECTIONS_2D)
    return in_batch_chunks(run, lv, n_mats * (int(n_levels) + 1) ** 2)
