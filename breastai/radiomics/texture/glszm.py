"""Grey level size zone matrix (GLSZM) features, IBSI family 9SAK.

A zone is a set of connected ROI voxels sharing a grey level: 8-connected within a slice (2D,
2.5D) or 26-connected in 3D. ``s_ij`` counts zones of grey level ``i`` and size ``j`` voxels;
``N_s = sum s_ij``; ``N_v`` the ROI voxel count (summed when slice matrices are merged);
``p_ij = s_ij / N_s``; ``s_i.``, ``s_.j`` the marginal sums.

=============== ===================================== ====== =====================================
tag             IBSI name                             code   formula
=============== ===================================== ====== =====================================
szm_sze         Small zone emphasis                   5QRC   sum s_.j / j^2 / N_s
szm_lze         Large zone emphasis                   48P8   sum j^2 s_.j / N_s
szm_lgze        Low grey level zone emphasis          XMSY   sum s_i. / i^2 / N_s
szm_hgze        High grey level zone emphasis         5GN9   sum i^2 s_i. / N_s
szm_szlge       Small zone low grey level emphasis    5RAI   sum s_ij / (i^2 j^2) / N_s
szm_szhge       Small zone high grey level emphasis   HW1V   sum i^2 s_ij / j^2 / N_s
szm_lzlge       Large zone low grey level emphasis    YH51   sum j^2 s_ij / i^2 / N_s
szm_lzhge       Large zone high grey level emphasis   J17V   sum i^2 j^2 s_ij / N_s
szm_glnu        Grey level non-uniformity             JNSA   sum s_i.^2 / N_s
szm_glnu_norm   Normalised grey level non-uniformity  Y1RO   sum s_i.^2 / N_s^2
szm_zsnu        Zone size non-uniformity              4JP3   sum s_.j^2 / N_s
szm_zsnu_norm   Normalised zone size non-uniformity   VB3A   sum s_.j^2 / N_s^2
szm_z_perc      Zone percentage                       P30P   N_s / N_v
szm_gl_var      Grey level variance                   BYLV   sum (i - mu_i)^2 p_ij, mu_i = sum i p_ij
szm_zs_var      Zone size variance                    3NSA   sum (j - mu_j)^2 p_ij, mu_j = sum j p_ij
szm_zs_entr     Zone size entropy                     GU8N   -sum p_ij log2 p_ij
=============== ===================================== ====== =====================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from breastai.radiomics.texture._common import (
    SparseGrid,
    label_zones,
    parse_zone_aggregation,
    prepare,
    reduce_zone_grid,
    slice_groups,
)

__all__ = ["FEATURES", "IBSI_CODES", "AGGREGATIONS", "glszm_features", "ZoneTable", "zone_table"]

_TABLE = [
    ("szm_sze", "sje", "Small zone emphasis", "5QRC"), ("szm_lze", "lje", "Large zone emphasis", "48P8"),
    ("szm_lgze", "lge", "Low grey level zone emphasis", "XMSY"),
    ("szm_hgze", "hge", "High grey level zone emphasis", "5GN9"),
    ("szm_szlge", "sjlge", "Small zone low grey level emphasis", "5RAI"),
    ("szm_szhge", "sjhge", "Small zone high grey level emphasis", "HW1V"),
    ("szm_lzlge", "ljlge", "Large zone low grey level emphasis", "YH51"),
    ("szm_lzhge", "ljhge", "Large zone high grey level emphasis", "J17V"),
    ("szm_glnu", "glnu", "Grey level non-uniformity", "JNSA"),
    ("szm_glnu_norm", "glnu_norm", "Normalised grey level non-uniformity", "Y1RO"),
    ("szm_zsnu", "jnu", "Zone size non-uniformity", "4JP3"),
    ("szm_zsnu_norm", "jnu_norm", "Normalised zone size non-uniformity", "VB3A"),
    ("szm_z_perc", "perc", "Zone percentage", "P30P"),
    ("szm_gl_var", "gl_var", "Grey level variance", "BYLV"),
    ("szm_zs_var", "j_var", "Zone size variance", "3NSA"),
    ("szm_zs_entr", "entr", "Zone size entropy", "GU8N"),
]
FEATURES: dict[str, str] = {tag: name for tag, _, name, _ in _TABLE}
IBSI_CODES: dict[str, str] = {tag: code for tag, _, _, code in _TABLE}
AGGREGATIONS = ("2d", "2.5d", "3d")


@dataclass
class ZoneTable:
    """Per-zone attributes of a labelled batch; entry 0 stands for "outside the ROI" (level 0)."""

    labels: torch.Tensor  # (B, D, H, W) int64 zone id 1..n, 0 outside the ROI
    level: torch.Tensor   # (n + 1,) grey level (0 for entry 0)
    size: torch.Tensor    # (n + 1,) voxel count
    group: torch.Tensor   # (n + 1,) lesion b (3D) or slice b * D + z (2D)
    n_groups: int
    nv: torch.Tensor      # (n_groups,) ROI voxels per group


def zone_table(lv: torch.Tensor, three_d: bool) -> ZoneTable:
    """Label zones of a masked level image and collect their level, size and group."""
    labels, n = label_zones(lv, three_d)
    flat = labels.reshape(-1)
    grp_vox = slice_groups(lv, three_d).reshape(-1)
    size = torch.bincount(flat, minlength=n + 1)
    size[0] = 0  # entry 0 (outside the ROI) is dropped later; keep it from inflating the j range
    level = torch.zeros(n + 1, dtype=torch.int64, device=lv.device).scatter_(0, flat, lv.reshape(-1).to(torch.int64))
    group = torch.zeros(n + 1, dtype=torch.int64, device=lv.device).scatter_(0, flat, grp_vox)
    B, D = lv.shape[:2]
    n_groups = B if three_d else B * D
    nv = torch.bincount(grp_vox, weights=(lv > 0).reshape(-1).to(torch.float64), minlength=n_groups)
    return ZoneTable(labels, level, size, group, n_groups, nv)


def glszm_features(levels: torch.Tensor, mask: torch.Tensor, n_levels: int,
                   aggregation: str = "2d", distance: int = 1) -> dict[str, torch.Tensor]:
    """IBSI GLSZM features for a batch of lesions.

    Args:
        levels: integer tensor ``(B, D, H, W)`` of grey levels ``1..n_levels`` (ignored outside mask).
        mask: bool tensor ``(B, D, H, W)``, the ROI.
        n_levels: number of discretised grey levels.
        aggregation: ``"2d"`` (per-slice matrices, features averaged over slices; tag suffix
            ``2D``), ``"2.5d"`` (slice matrices merged; ``2_5D``) or ``"3d"`` (one 3D matrix with
            26-connected zones; ``3D``). GLCM-style names (``2d_avg``, ``3d_merged``...) are mapped
            by their dimensionality.
        distance: accepted for a uniform call signature across families; only the IBSI default
            ``1`` is supported (runs / zone linkage use immediate neighbours).

    Returns:
        Mapping from each tag in :data:`FEATURES` to a float64 tensor ``(B,)``; NaN for an empty ROI.
    """
    mode = parse_zone_aggregation(aggregation)
    if int(distance) != 1:
        raise ValueError(f"GLSZM supports only distance=1, got {distance}")
    lv = prepare(levels, mask, n_levels)
    zt = zone_table(lv, mode == "3d")
    grid = SparseGrid.from_items(zt.group, zt.level, zt.size, zt.n_groups, int(n_levels))
    f = reduce_zone_grid(grid, zt.nv, mode, lv.shape[0])
    return {tag: f[key] for tag, key, _, _ in _TABLE}
