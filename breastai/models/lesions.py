"""From a segmenter's output to lesions: connected components, their size and their confidence.

A pixel is lesion where the mask probability reaches ``pixel_threshold``. Each 8-connected
component is a candidate; it is kept when it covers at least ``min_area_fraction`` of the image
and ``min_component_fraction`` of the largest candidate (specks beside a lesion are not lesions).
A kept component's ``probability`` is ``min(presence, max mask probability inside it)``: the
image-level presence head says whether there is a lesion at all, the mask says how sure the model
is of this one. Components whose probability falls below the presence threshold are dropped;
none left means "no lesion found".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Lesion", "find_lesions", "lesion_score", "max_diameter"]


@dataclass
class Lesion:
    """One found lesion on the grid of the probability map it came from.

    Attributes:
        component: 1-based id, largest first.
        mask: boolean mask (H, W) of the component.
        area_px: its area in pixels.
        max_diameter_px: its largest extent (maximum Feret diameter, between pixel centres), pixels.
        probability: ``min(presence probability, max mask probability in the component)``.
    """

    component: int
    mask: np.ndarray = field(repr=False)
    area_px: int
    max_diameter_px: float
    probability: float


def max_diameter(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Maximum Feret diameter of a boolean mask: the largest distance between two of its pixel
    centres, in units of ``spacing`` (row, column). 0 for one pixel or an empty mask."""
    pts = np.argwhere(np.asarray(mask, bool)).astype(np.float64)
    if len(pts) < 2:
        return 0.0
    pts *= np.asarray(spacing, np.float64)
    if len(pts) > 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # collinear pixels: every pixel is on the "hull"
            pass
    d = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((d ** 2).sum(-1)).max())


def _candidates(prob: np.ndarray, pixel_threshold: float, min_area_fraction: float,
                min_component_fraction: float) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """The component labels of ``prob >= pixel_threshold`` and the kept candidates, largest first,
    as ``(label, area, peak probability)``."""
    from scipy import ndimage

    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"a mask probability map is 2-D, got shape {prob.shape}")
    labels, n = ndimage.label(prob >= pixel_threshold, structure=np.ones((3, 3), bool))
    if n == 0:
        return labels, []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peaks = ndimage.maximum(prob, labels, index=np.arange(1, n + 1))
    floor = max(min_area_fraction * prob.size, min_component_fraction * areas.max())
    return labels, [(int(k + 1), int(areas[k]), float(peaks[k])) for k in np.argsort(-areas, kind="stable") if areas[k] >= floor]


def lesion_score(prob: np.ndarray, presence: float, *, pixel_threshold: float = 0.5, min_area_fraction: float = 0.002,
                 min_component_fraction: float = 0.1) -> float:
    """The highest lesion probability :func:`find_lesions` would give this image at any presence
    threshold (0 when no component passes the area floors): the image holds a found lesion exactly
    when this reaches the threshold, which is how the threshold is chosen on validation."""
    _, cands = _candidates(prob, pixel_threshold, min_area_fraction, min_component_fraction)
    return max((min(float(presence), peak) for _, _, peak in cands), default=0.0)


def find_lesions(prob: np.ndarray, presence: float, *, presence_threshold: float, pixel_threshold: float = 0.5,
                 min_area_fraction: float = 0.002, min_component_fraction: float = 0.1) -> list[Lesion]:
    """The lesions of one image, largest first (empty: no lesion found).

    Args:
        prob: mask probabilities (H, W) in [0, 1].
        presence: the image's calibrated lesion-presence probability.
        presence_threshold: the segmenter's operating threshold on it (chosen on validation).
        pixel_threshold: mask probability at which a pixel is lesion.
        min_area_fraction: smallest component, as a fraction of the image's pixels.
        min_component_fraction: smallest component, as a fraction of the largest one.
    """
    labels, cands = _candidates(prob, pixel_threshold, min_area_fraction, min_component_fraction)
    found = []
    for label, area, peak in cands:
        p = float(min(presence, peak))
        if p < presence_threshold:
            continue
        mask = labels == label
        found.append(Lesion(len(found) + 1, mask, area, max_diameter(mask), p))
    return found
