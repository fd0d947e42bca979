"""What a predict record holds: its columns, the keys only writers see, and the arrays beside it.

The :class:`~breastai.inference.predictor.Predictor` fills records of these fields; the writers
(:mod:`breastai.inference.writers`, :mod:`breastai.inference.maps`, the DICOM and Ray stages) read
them. Kept apart so that both sides name one schema.
"""

from __future__ import annotations

from typing import Any

from breastai.core.keys import Keys
from breastai.inference.segment import LESION_FIELDS
from breastai.models.saliency import METHODS

__all__ = ["RECORD_FIELDS", "OPTIONAL_FIELDS", "Maps", "check_saliency", "strip_private"]

# Record keys a writer may read during ``on_item`` and that are removed right after: the input's
# path (unredacted), its DICOM frame, which image it is (``loading.image_key``: the records of one
# image share it), who drew its mask (``given``, ``box``, ``provider:<name>``, ``segmenter``), its
# calibrated log-odds (what breast and exam scores combine) and, for a segmenter's lesion,
# ``(image, outline)`` on the stored image (the outline writer's).
_PRIVATE = ("_path", "_frame", "_image", "_mask_origin", "_calibrated_logit", "_outline")

RECORD_FIELDS = ["id", "source", "probability", "label", "uncertainty", "logit", "ood", "ood_score", "has_mask",
                 *LESION_FIELDS, "saliency_png", "saliency_npy", "error"]

# Fields the predictor adds where an input has them: its exam grouping (datalist or DICOM header),
# with ``keep_identifiers`` a DICOM's identifiers, the whole-image score of an image with no lesion
# found (a classifier with whole-image members behind a segmenter) and, behind a segmenter, the
# image's probability of cancer (``segment.cancer_probability``).
OPTIONAL_FIELDS = [Keys.EXAM, Keys.LATERALITY, Keys.VIEW, "patient_id", "sop_instance_uid", "image_probability",
                   "cancer_probability"]

# (map, image, lesion mask) of one record, all in the stored image geometry: map and image are None
# without a saliency method, the mask None without an outline (the SEG and lesion size need only it)
Maps = tuple["np.ndarray | None", "np.ndarray | None", "np.ndarray | None"]


def check_saliency(method: str) -> None:
    """Refuse an unknown saliency method.

    Raises:
        ValueError: ``method`` is not one of :data:`~breastai.models.saliency.METHODS`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")


def strip_private(record: dict[str, Any]) -> dict[str, Any]:
    """Remove a record's private (writer-only) keys; returns them. The unredacted path never reaches
    the records."""
    return {key: record.pop(key) for key in _PRIVATE if key in record}
