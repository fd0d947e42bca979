"""Lesion radiomics of datalist rows and of single arrays, through :class:`RadiomicsFeaturesd`.

A Dataset built with the transform in its preset (``build_transforms(cfg, train, full_image=[rad])``)
fills the row cache as it decodes each image; :func:`radiomics_matrix` reads that cache, and runs
the same preset, up to the transform, only over rows no Dataset has measured yet.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from breastai.radiomics.extract import RadiomicsInputError
from breastai.radiomics.transform import radiomics_transform

__all__ = ["radiomics_matrix", "radiomics_of_array"]


def radiomics_matrix(cfg: dict[str, Any], records: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Feature names and the ``(N, F)`` float64 matrix of datalist ``records``.

    Rows already cached (by a Dataset's preset, or the ``.npz`` with ``data.cache: disk``) are not
    read again; the others go through the run's evaluation preset up to the transform, once, and
    the ``.npz`` is updated.

    Raises:
        RadiomicsInputError: a row without a mask, or with an empty one; the message names the row.
        ImageReadError: an unreadable image (names the file).
    """
    from breastai.data.transforms import Preset, build_transforms

    rad = radiomics_transform(cfg)
    items = rad.keyed(records)
    todo = [it for it in items if rad.cached(it) is None]
    if todo:
        steps = build_transforms(cfg, train=False, full_image=[rad]).transforms
        prefix = Preset(steps[: steps.index(rad) + 1])  # load, normalise, measure: no crop or resize
        for it in todo:
            prefix(it)
        rad.save()
    if not items:
        return rad.names, np.zeros((0, len(rad.names)))
    return rad.names, np.stack([rad.cached(it) for it in items])


def radiomics_of_array(cfg: dict[str, Any], image01: np.ndarray, mask: np.ndarray,
                       expected_names: Sequence[str] | None = None) -> np.ndarray:
    """The raw float32 feature vector of one lesion at inference (not cached).

    ``image01`` (H, W) is already normalised like the training images (the preset's intensity
    step), ``mask`` (H, W) boolean on the same grid: :class:`~breastai.radiomics.transform.RadiomicsFeaturesd`
    on them.

    Raises:
        RadiomicsInputError: empty mask, or feature names differing from those the model was trained on.
    """
    rad = radiomics_transform(cfg, disk=False)  # one array, no row key: nothing to look up or keep
    vec = rad({"image": np.asarray(image01)[None], "mask": np.asarray(mask)[None]})["radiomics"]
    if expected_names is not None and rad.names != list(expected_names):
        raise RadiomicsInputError("this checkpoint's radiomics features differ from this breastai's feature set; "
                                  "retrain the model with this version")
    return vec
