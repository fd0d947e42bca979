"""IBSI-conformant texture matrix families, batched over lesions in PyTorch.

Every family function takes ``(levels, mask, n_levels, aggregation=..., ...)`` with ``levels`` an
integer tensor ``(B, D, H, W)`` of grey levels ``1..n_levels`` (ignored outside the mask), ``mask``
a bool tensor of the same shape (2D images: ``D == 1``), and returns ``{tag: float64 tensor (B,)}``
keyed by the IBSI reference tag base (e.g. ``cm_joint_max``; no aggregation suffix).

:data:`FAMILIES` maps a family name to ``(function, FEATURES, supported aggregations)``. The
directional families (GLCM, GLRLM) support ``2d_avg``, ``2d_merged``, ``2.5d_d_merged``,
``2.5d_v_merged``, ``3d_avg``, ``3d_merged``; the others ``2d``, ``2.5d``, ``3d``. All functions
also accept the IBSI reference tag suffixes (``2D_avg``, ``2D_comb``, ``2_5D_avg``, ``2_5D_comb``,
``3D_avg``, ``3D_comb``, ``2D``, ``2_5D``, ``3D``); zone families map directional names by
dimensionality. Feature definitions, formulas and IBSI codes are tabulated in each module docstring.
"""

from __future__ import annotations

from typing import Callable

from breastai.radiomics.texture import glcm, gldzm, glrlm, glszm, ngldm, ngtdm
from breastai.radiomics.texture._common import (
    parse_directional_aggregation,
    parse_zone_aggregation,
)
from breastai.radiomics.texture.glcm import glcm_features
from breastai.radiomics.texture.gldzm import gldzm_features
from breastai.radiomics.texture.glrlm import glrlm_features
from breastai.radiomics.texture.glszm import glszm_features
from breastai.radiomics.texture.ngldm import ngldm_features
from breastai.radiomics.texture.ngtdm import ngtdm_features

__all__ = [
    "FAMILIES",
    "IBSI_CODES",
    "glcm_features",
    "glrlm_features",
    "glszm_features",
    "gldzm_features",
    "ngtdm_features",
    "ngldm_features",
    "parse_directional_aggregation",
    "parse_zone_aggregation",
]

FAMILIES: dict[str, tuple[Callable, dict[str, str], tuple[str, ...]]] = {
    "glcm": (glcm_features, glcm.FEATURES, glcm.AGGREGATIONS),
    "glrlm": (glrlm_features, glrlm.FEATURES, glrlm.AGGREGATIONS),
    "glszm": (glszm_features, glszm.FEATURES, glszm.AGGREGATIONS),
    "gldzm": (gldzm_features, gldzm.FEATURES, gldzm.AGGREGATIONS),
    "ngtdm": (ngtdm_features, ngtdm.FEATURES, ngtdm.AGGREGATIONS),
    "ngldm": (ngldm_features, ngldm.FEATURES, ngldm.AGGREGATIONS),
}

IBSI_CODES: dict[str, str] = {
    **glcm.IBSI_CODES, **glrlm.IBSI_CODES, **glszm.IBSI_CODES,
    **gldzm.IBSI_CODES, **ngtdm.IBSI_CODES, **ngldm.IBSI_CODES,
}
