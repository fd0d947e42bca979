"""Grey level distance zone matrix (GLDZM) features, IBSI family VMDZ.

Zones are those of the GLSZM (8-connected in-plane, 26-connected in 3D). The distance of a voxel to
the ROI edge is the number of 4-connected (2D, within the slice) or 6-connected (3D) steps needed to
leave the ROI, so an edge voxel has distance 1 (voxels outside the image count as outside the ROI);
equivalently the number of successive erosions with a cross structuring element the voxel survives.
The ROI mask serves as both morphological and intensity mask. A zone's distance is the minimum over
its voxels. ``d_ij`` counts zones of grey level ``i`` at distance ``j``; ``N_s = sum d_ij``; ``N_v``
the ROI voxel count (summed when merging); ``p_ij = d_ij / N_s``.

=============== ========================================= ====== =====================================
tag             IBSI name                                 code   formula
=============== ========================================= ====== =====================================
dzm_sde         Small distance emphasis                   0GBI   sum d_.j / j^2 / N_s
dzm_lde         Large distance emphasis                   MB4I   sum j^2 d_.j / N_s
dzm_lgze        Low grey level zone emphasis              S1RA   sum d_i. / i^2 / N_s
dzm_hgze        High grey level zone emphasis             K26C   sum i^2 d_i. / N_s
dzm_sdlge       Small distance low grey level emphasis    RUVG   sum d_ij / (i^2 j^2) / N_s
dzm_sdhge       Small distance high grey level emphasis   DKNJ   sum i^2 d_ij / j^2 / N_s
dzm_ldlge       Large distance low grey level emphasis    A7WM   sum j^2 d_ij / i^2 / N_s
dzm_ldhge       Large distance high grey level emphasis   KLTH   sum i^2 j^2 d_ij / N_s
dzm_glnu        Grey level non-uniformity                 VFT7   sum d_i.^2 / N_s
dzm_glnu_norm   Normalised grey level non-uniformity      7HP3   sum d_i.^2 / N_s^2
dzm_zdnu        Zone distance non-uniformity              V294   sum d_.j^2 / N_s
dzm_zdnu_norm   Normalised zone distance non-uniformity   IATH   sum d_.j^2 / N_s^2
dzm_z_perc      Zone percentage                           VIWW   N_s / N_v
dzm_gl_var      Grey level variance                       QK93   sum (i - mu_i)^2 p_ij, mu_i = sum i p_ij
dzm_zd_var      Zone distance variance                    7WT1   sum (j - mu_j)^2 p_ij, mu_j = sum j p_ij
dzm_zd_entr     Zone distance entropy                     GBDU   -sum p_ij log2 p_ij
=============== ========================================= ====== =====================================
"""

from __future__ import annotations

import torch

from breastai.radiomics.texture._common import (
    SparseGrid,
    parse_zone_aggregation,
    prepare,
    reduce_zone_grid,
)
from breastai.radiomics.texture.glszm import zone_table

__all__ = ["FEATURES", "IBSI_CODES", "AGGREGATIONS", "gldzm_features", "border_distance"]

_TABLE = [
    ("dzm_sde", "sje", "Small distance emphasis", "0GBI"), ("dzm_lde", "lje", "Large distance emphasis", "MB4I"),
    ("dzm_lgze", "lge", "Low grey level zone emphasis", "S1RA"),
    ("dzm_hgze", "hge", "High grey level zone emphasis", "K26C"),
    ("dzm_sdlge", "sjlge", "Small distance low grey level emphasis", "RUVG"),
    ("dzm_sdhge", "sjhge", "Small distance high grey level emphasis", "DKNJ"),
    ("dzm_ldlge", "ljlge", "Large distance low grey level emphasis", "A7WM"),
    ("dzm_ldhge", "ljhge", "Large distance high grey level emphasis", "KLTH"),
    ("dzm_glnu", "glnu", "Grey level non-uniformity", "VFT7"),
    ("dzm_glnu_norm", "glnu_norm", "Normalised grey level non-uniformity", "7HP3"),
    ("dzm_zdnu", "jnu", "Zone distance non-uniformity", "V294"),
    ("dzm_zdnu_norm", "jnu_norm", "Normalised zone distance non-uniformity", "IATH"),
    ("dzm_z_perc", "perc", "Zone percentage", "VIWW"),
    ("dzm_gl_var", "gl_var", "Grey level variance", "QK93"),
    ("dzm_zd_var", "j_var", "Zone distance variance", "7WT1"),
    ("dzm_zd_entr", "entr", "Zone distance entropy", "GBDU"),
]
FEATURES: dict[str, str] = {tag: name for tag, _, name, _ in _TABLE}
IBSI_CODES: dict[str, str] = {tag: code for tag, _, _, code in _TABLE}
AGGREGATIONS = ("2d", "2.5d", "3d")


def border_distance(mask: torch.Tensor, three_d: bool) -> torch.Tensor:
    """Taxicab distance (in steps) from each ROI voxel to the nearest non-ROI voxel, 0 outside.

    4-connected within slices unless ``three_d`` (6-connected). Outside the image is non-ROI.
    Computed with :func:`scipy.ndimage.distance_transform_cdt` on CPU (a two-pass chamfer), with
    a structuring element that never links lesions of the batch.
    """
    import numpy as np
    from scipy import ndimage

    m = mask.detach().cpu().numpy().astype(bool)
    pad = ((0, 0), (1, 1), (1, 1), (1, 1)) if three_d else ((0, 0), (0, 0), (1, 1), (1, 1))
    mp = np.pad(m, pad)
    metric = np.zeros((3, 3, 3, 3), dtype=bool)
    metric[1, 1, 1, :] = metric[1, 1, :, 1] = True
    if three_d:
        metric[1, :, 1, 1] = True
    dist = ndimage.distance_transform_cdt(mp, metric=metric)
    dist = dist[:, 1:-1, 1:-1, 1:-1] if three_d else dist[:, :, 1:-1, 1:-1]
    return torch.from_numpy(np.ascontiguousarray(dist).astype(np.int64)).to(mask.device)


def gldzm_features(levels: torch.Tensor, mask: torch.Tensor, n_levels: int,
                   aggregation: str = "2d", distance: int = 1) -> dict[str, torch.Tensor]:
    """IBSI GLDZM features for a batch of lesions.

    Args:
        levels: integer tensor ``(B, D, H, W)`` of grey levels ``1..n_levels`` (ignored outside mask).
        mask: bool tensor ``(B, D, H, W)``, the ROI (used as both intensity and morphological mask).
        n_levels: number of discretised grey levels.
        aggregation: ``"2d"`` (per-slice matrices and in-plane distances, features averaged over
            slices; tag suffix ``2D``), ``"2.5d"`` (slice matrices merged; ``2_5D``) or ``"3d"``
            (``3D``). GLCM-style names are mapped by their dimensionality.
        distance: accepted for a uniform call signature across families; only the IBSI default
            ``1`` is supported (runs / zone linkage use immediate neighbours).

    Returns:
        Mapping from each tag in :data:`FEATURES` to a float64 tensor ``(B,)``; NaN for an empty ROI.
    """
    mode = parse_zone_aggregation(aggregation)
    if int(distance) != 1:
        raise ValueError(f"GLDZM supports only distance=1, got {distance}")
    lv = prepare(levels, mask, n_levels)
    three_d = mode == "3d"
    zt = zone_table(lv, three_d)
    dist = border_distance(lv > 0, three_d)
    zone_dist = torch.zeros(zt.level.numel(), dtype=torch.int64, device=lv.device)
    # Voxels outside the ROI carry distance 0 and all fall into entry 0, which has level 0 and is
    # dropped by SparseGrid; the max-initialised entries are overwritten by every zone's minimum.
    zone_dist = zone_dist.fill_(torch.iinfo(torch.int64).max).scatter_reduce(
        0, zt.labels.reshape(-1), dist.reshape(-1), reduce="amin")
    zone_dist[0] = 0  # entry 0 stays at the fill value when the ROI fills the whole image
    grid = SparseGrid.from_items(zt.group, zt.level, zone_dist, zt.n_groups, int(n_levels))
    f = reduce_zone_grid(grid, zt.nv, mode, lv.shape[0])
    return {tag: f[key] for tag, key, _, _ in _TABLE}
