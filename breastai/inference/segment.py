"""The segmenter stage of predict: automatic outlines for inputs that come without a mask or box.

Where an input has no mask, no box and no mask provider's outline, the predictor's segmenter (a
:class:`~breastai.models.outliner.Outliner`, chosen by
:func:`~breastai.models.outliner.resolve_segmenter`: the one given, else a pipeline checkpoint's own) outlines it on the image as stored, and each lesion
it finds becomes a record of its own, scored by the classifier with that lesion's mask exactly as
a traced mask would be (crop, outline channel, radiomics). This module makes the lesion fields of
a record:

* ``mask_source``: ``given`` (a mask file or array, from the caller or a datalist), ``box``,
  ``provider`` (a mask provider), ``segmenter``; empty when the model saw no mask;
* ``component`` (1..n, largest first) and ``lesion_probability`` (the segmenter's confidence in
  that lesion: ``min(presence, highest mask probability inside it)``, or the image's presence
  probability for a segmenter with ``seg.presence_gate``), for segmenter records;
* ``area_px`` and ``max_diameter_px`` of the outline (given or segmenter; a box is no outline and
  gets none), measured on the image as stored, edge to edge as a ruler would (one pixel measures
  sqrt(2) across; the SR of ``--dicom-out`` reports the same figures), and ``area_mm2``,
  ``max_diameter_mm`` with ``spacing_source`` where a pixel spacing is stated
  (:func:`breastai.data.spacing.lesion_spacing`), empty otherwise;
* ``scored_on``: ``lesion`` when the classifier reads the lesion (crop, outline channel or
  radiomics), ``image`` when it reads the whole image alone: its probability is then the image's,
  the same for every lesion of the image, and the lesion fields say where the lesions are.

An image where the segmenter finds no lesion gives ONE record with ``label`` = ``no lesion
found`` (:data:`NO_LESION`), its presence probability as ``lesion_probability``, and no malignancy
probability: not an error (the exit status stays 0), and never a score of an empty crop. Where the
classifier has members that read the whole image and no mask (an ensemble of a lesion crop and a
whole-image model, or a whole-image model itself), they still score the image: ``image_probability``,
their calibrated probability (averaged log-odds), which ranks the image without any lesion
(docs/experiments.md, "The whole image beside the lesion crop").

Every segmenter record also gets ``cancer_probability`` (:func:`cancer_probability`): the image's
presence probability ``q`` times the record's malignancy probability ``p`` (its ``probability``, or
``image_probability`` where no lesion was found). ``p`` is a probability of malignancy *given a
lesion* (the classifiers never saw normal tissue); ``q x p`` is the probability that the image shows
a cancer, which ranks images with and without a lesion together: on BUSI's held-out folds, malignant
against benign and normal images 0.960 against 0.945 by ``p``, the lesion images alone unchanged
(docs/experiments.md, "The image's probability of cancer as lesion presence times malignancy").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from breastai.data.spacing import lesion_spacing
from breastai.models.lesions import lesion_size
from breastai.models.outliner import Outline

__all__ = ["NO_LESION", "LESION_FIELDS", "dicom_header", "size_fields", "lesion_id", "cancer_probability",
           "no_lesion_fields"]

NO_LESION = "no lesion found"

# The record's lesion columns, in predictions.csv order.
LESION_FIELDS = ["mask_source", "scored_on", "component", "lesion_probability", "area_px", "max_diameter_px",
                 "area_mm2", "max_diameter_mm", "spacing_source"]

def dicom_header(image: Any) -> Any:
    """The DICOM header of an input path (cached; pixels not read), or None for other inputs."""
    if isinstance(image, np.ndarray):
        return None
    from breastai.data.readers.dicom_header import is_dicom, read_header

    return read_header(image) if Path(image).is_file() and is_dicom(image) else None


def size_fields(mask: np.ndarray | None, header: Any, pixel_size_mm: Any = None) -> dict[str, Any]:
    """``area_px``, ``max_diameter_px`` and, where a spacing is stated, ``area_mm2``, ``max_diameter_mm``
    and ``spacing_source`` of a lesion mask on the stored image (all None for an empty mask)."""
    out: dict[str, Any] = dict.fromkeys(LESION_FIELDS[4:])
    px = lesion_size(mask, None) if mask is not None else None
    if px is None:
        return out
    out.update(area_px=int(round(px.area)), max_diameter_px=round(px.diameter, 3))
    spacing = lesion_spacing(header, mask, pixel_size_mm)
    if spacing is not None:
        mm = lesion_size(mask, (spacing.row_mm, spacing.col_mm))
        out.update(area_mm2=round(mm.area, 4), max_diameter_mm=round(mm.diameter, 4), spacing_source=spacing.source)
    return out


def lesion_id(image_id: str, component: int, n_lesions: int) -> str:
    """A lesion record's id: the image's, suffixed ``_l<component>`` only when the image has several lesions."""
    return image_id if n_lesions <= 1 else f"{image_id}_l{component}"


def cancer_probability(presence: float, probability: float) -> float:
    """``q x p``: the image's lesion-presence probability times a malignancy probability given a lesion."""
    return round(float(presence) * float(probability), 6)


def no_lesion_fields(outline: Outline) -> dict[str, Any]:
    """The fields of the one record of an image where the segmenter found no lesion."""
    return {"label": NO_LESION, "mask_source": "segmenter", "lesion_probability": round(outline.presence, 6)}
