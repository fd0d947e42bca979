"""IBSI-conformant radiomics in PyTorch, batched over many lesions (CPU or CUDA).

Families: ``morphology`` (IBSI 3D morphology, or its 2D analogues for single slices),
``statistics``, ``histogram`` (intensity histogram), ``ivh`` (intensity-volume histogram),
``local`` (local intensity), the opt-in ``autocorrelation`` (Moran's I, Geary's C) and, when :mod:`breastai.radiomics.texture` is present, the texture
families (GLCM, GLRLM, GLSZM, GLDZM, NGTDM, NGLDM).

Example::

    from breastai.radiomics import extract_features
    table = extract_features(images, masks, n_bins=32)
    table.names, table.values  # (N, F)

:class:`breastai.radiomics.transform.RadiomicsFeaturesd` is the same extraction as a MONAI
dictionary transform (cached per datalist row), the form the training preset uses.
"""

from breastai.radiomics.discretise import discretise, resegment
from breastai.radiomics.extract import (
    BASE_FAMILIES,
    OPTIONAL_FAMILIES,
    FeatureTable,
    RadiomicsInputError,
    available_families,
    default_families,
    extract_features,
    features_for_datalist,
)
from breastai.radiomics.intensity import (
    IH_FEATURES,
    IVH_FEATURES,
    LOCAL_FEATURES,
    STAT_FEATURES,
)
from breastai.radiomics.morphology import (
    MORPH2D_FEATURES,
    MORPH_FEATURES,
    NOT_IMPLEMENTED,
)

__all__ = [
    "BASE_FAMILIES",
    "FeatureTable",
    "RadiomicsInputError",
    "OPTIONAL_FAMILIES",
    "available_families",
    "default_families",
    "extract_features",
    "features_for_datalist",
    "discretise",
    "resegment",
    "feature_docs",
    "MORPH_FEATURES",
    "MORPH2D_FEATURES",
    "STAT_FEATURES",
    "IH_FEATURES",
    "IVH_FEATURES",
    "LOCAL_FEATURES",
    "NOT_IMPLEMENTED",
]


def feature_docs() -> dict[str, str]:
    """Every feature tag this engine computes -> ``"IBSI name (IBSI id): formula"``."""
    out: dict[str, str] = {}
    for d in (MORPH_FEATURES, MORPH2D_FEATURES, STAT_FEATURES, IH_FEATURES, IVH_FEATURES, LOCAL_FEATURES):
        out.update(d)
    from breastai.radiomics.extract import texture_families

    for _, (_, feats, _) in texture_families().items():
        out.update(feats)
    return out
