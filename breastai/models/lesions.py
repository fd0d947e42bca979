"""From a segmenter's output to lesions: connected components, their size and their confidence.

A pixel is lesion where the mask probability reaches ``pixel_threshold``. Each 8-connected
component is a candidate; it is kept when it covers at least ``min_area_fraction`` of the image
and ``min_component_fraction`` of the largest candidate (specks beside a lesion are not lesions).
A kept component's ``probability`` is ``min(presence, max mask probability inside it)``: the
image-level presence head says whether there is a lesion at all, the mask says how sure the model
is of this one. Components whose probability falls below the presence threshold are dropped;
none left means "no lesion found".

With ``peak_fraction`` = f > 0, an image where no component passes at ``pixel_threshold`` is
outlined at f times its own highest mask probability instead (the same floors): a faint lesion
the mask puts nowhere above 0.5 still gets an outline, and whether it is kept is then the
presence threshold's decision, not the pixel threshold's.

With ``presence_gate`` the presence probability alone decides and the mask only places: every
candidate of an image whose presence reaches the threshold is kept, each carrying that presence
probability (a mask peak no longer vetoes what the presence head says).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Lesion", "LesionSize", "find_lesions", "find_lesions_and_score", "lesion_rules", "lesion_score", "lesion_size",
           "mask_edge", "max_diameter"]

_RULES = ("pixel_threshold", "min_area_fraction", "min_component_fraction", "peak_fraction", "presence_gate")


@dataclass
class Lesion:
    """One found lesion on the grid of the probability map it came from.

    Attributes:
        component: 1-based id, largest first.
        mask: boolean mask (H, W) of the component.
        area_px: its area in pixels.
        max_diameter_px: its largest extent (maximum Feret diameter, edge to edge as a ruler on the
            pixels would measure it), pixels.
        probability: ``min(presence probability, max mask probability in the component)``, or the
            presence probability with ``presence_gate``.
    """

    component: int
    mask: np.ndarray = field(repr=False)
    area_px: int
    max_diameter_px: float
    probability: float


@dataclass
class LesionSize:
    """Area and largest diameter of a lesion mask; ``unit`` is ``mm`` or ``pixel``."""

    area: float
    diameter: float
    unit: str


def mask_edge(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The edge of a mask: its pixels within ``width`` 4-neighbour steps of the background (the image's
    border counts as background)."""
    from scipy.ndimage import binary_erosion

    m = np.asarray(mask) > 0
    return m & ~binary_erosion(m, iterations=width, border_value=0)


def lesion_size(mask: np.ndarray, spacing: tuple[float, float] | None) -> LesionSize | None:
    """Area and maximum Feret diameter of ``mask`` (None when empty), in mm with ``spacing`` else in pixels.

    The diameter is the largest distance between two corners of the mask's pixels (the convex hull
    of the pixel squares), so one pixel measures sqrt(2) pixel widths, as a ruler on the image would.
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    dy, dx = spacing or (1.0, 1.0)
    area = float(m.sum()) * dy * dx
    # The hull's corners are corners of edge pixels: the interior is left out, and the corners are
    # deduplicated as one integer each (a 2-D np.unique sorts rows, ten times slower).
    rows, cols = np.nonzero(mask_edge(m))
    width = m.shape[1] + 1
    keys = np.unique(np.concatenate([(rows + a) * width + cols + b for a in (0, 1) for b in (0, 1)]))
    corners = np.stack([keys // width, keys % width], 1).astype(np.float64) * np.array([dy, dx])
    if len(corners) > 4:
        from scipy.spatial import ConvexHull, QhullError

        try:
            corners = corners[ConvexHull(corners).vertices]
        except QhullError:  # collinear corners (a one-pixel-wide line): the extremes are among them
            pass
    return LesionSize(area=area, diameter=_max_distance(corners), unit="mm" if spacing else "pixel")


def _max_distance(points: np.ndarray) -> float:
    """Largest pairwise distance, in blocks so a hull of thousands of corners needs no full distance matrix."""
    best = 0.0
    for i in range(0, len(points), 512):
        chunk = points[i:i + 512]
        best = max(best, float(np.sqrt(((chunk[:, None, :] - points[None, :, :]) ** 2).sum(-1)).max()))
    return best


def max_diameter(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Maximum Feret diameter of a boolean mask, edge to edge (:func:`lesion_size`), in units of
    ``spacing`` (row, column). 0 for an empty mask."""
    size = lesion_size(mask, tuple(spacing))
    return 0.0 if size is None else size.diameter


def lesion_rules(seg: dict) -> dict[str, Any]:
    """The keyword arguments of :func:`find_lesions` and :func:`lesion_score` from a config's ``seg``
    section (a checkpoint's is complete: keys it predates are filled in where it is loaded)."""
    return {**{k: float(seg[k]) for k in _RULES[:-1]}, "presence_gate": bool(seg["presence_gate"])}


def _candidates(prob: np.ndarray, pixel_threshold: float, min_area_fraction: float,
                min_component_fraction: float, peak_fraction: float = 0.0) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """The component labels of ``prob >= pixel_threshold`` and the kept candidates, largest first,
    as ``(label, area, peak probability)``; with none and ``peak_fraction`` > 0, the same at
    ``peak_fraction`` times the map's highest probability."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"a mask probability map is 2-D, got shape {prob.shape}")
    labels, cands = _components(prob, pixel_threshold, min_area_fraction, min_component_fraction)
    peak = float(prob.max(initial=0.0))
    if cands or peak_fraction <= 0 or peak <= 0 or peak_fraction * peak >= pixel_threshold:
        return labels, cands
    return _components(prob, peak_fraction * peak, min_area_fraction, min_component_fraction)


def _components(prob: np.ndarray, threshold: float, min_area_fraction: float,
                min_component_fraction: float) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    from scipy import ndimage

    labels, n = ndimage.label(prob >= threshold, structure=np.ones((3, 3), bool))
    if n == 0:
        return labels, []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    inside = labels > 0  # ndimage.maximum sorts every pixel of the image; only the components' matter
    peaks = np.zeros(n + 1, np.float32)
    np.maximum.at(peaks, labels[inside], prob[inside])
    peaks = peaks[1:]
    floor = max(min_area_fraction * prob.size, min_component_fraction * areas.max())
    return labels, [(int(k + 1), int(areas[k]), float(peaks[k])) for k in np.argsort(-areas, kind="stable") if areas[k] >= floor]


def lesion_score(prob: np.ndarray, presence: float, *, pixel_threshold: float = 0.5, min_area_fraction: float = 0.002,
                 min_component_fraction: float = 0.1, peak_fraction: float = 0.0, presence_gate: bool = False) -> float:
    """The highest lesion probability :func:`find_lesions` would give this image at any presence
    threshold (0 when no component passes the area floors): the image holds a found lesion exactly
    when this reaches the threshold, which is how the threshold is chosen on validation."""
    return find_lesions_and_score(prob, presence, presence_threshold=np.inf, pixel_threshold=pixel_threshold,
                                  min_area_fraction=min_area_fraction, min_component_fraction=min_component_fraction,
                                  peak_fraction=peak_fraction, presence_gate=presence_gate)[1]


def _probability(presence: float, peak: float, presence_gate: bool) -> float:
    return float(presence) if presence_gate else float(min(presence, peak))


def find_lesions(prob: np.ndarray, presence: float, *, presence_threshold: float, pixel_threshold: float = 0.5,
                 min_area_fraction: float = 0.002, min_component_fraction: float = 0.1,
                 peak_fraction: float = 0.0, presence_gate: bool = False) -> list[Lesion]:
    """The lesions of one image, largest first (empty: no lesion found).

    Args:
        prob: mask probabilities (H, W) in [0, 1].
        presence: the image's calibrated lesion-presence probability.
        presence_threshold: the segmenter's operating threshold on it (chosen on validation).
        pixel_threshold: mask probability at which a pixel is lesion.
        min_area_fraction: smallest component, as a fraction of the image's pixels.
        min_component_fraction: smallest component, as a fraction of the largest one.
        peak_fraction: with no component at ``pixel_threshold``, outline at this fraction of the
            map's highest probability instead (0: never).
        presence_gate: keep every candidate when ``presence`` reaches the threshold, each with
            probability ``presence`` (else each with ``min(presence, its peak)``, kept on that).
    """
    return find_lesions_and_score(prob, presence, presence_threshold=presence_threshold, pixel_threshold=pixel_threshold,
                                  min_area_fraction=min_area_fraction, min_component_fraction=min_component_fraction,
                                  peak_fraction=peak_fraction, presence_gate=presence_gate)[0]


def find_lesions_and_score(prob: np.ndarray, presence: float, *, presence_threshold: float, pixel_threshold: float = 0.5,
                           min_area_fraction: float = 0.002, min_component_fraction: float = 0.1,
                           peak_fraction: float = 0.0, presence_gate: bool = False) -> tuple[list[Lesion], float]:
    """:func:`find_lesions` and :func:`lesion_score` of one image from one pass over its components
    (arguments as :func:`find_lesions`)."""
    labels, cands = _candidates(prob, pixel_threshold, min_area_fraction, min_component_fraction, peak_fraction)
    found, score = [], 0.0
    for label, area, peak in cands:
        p = _probability(presence, peak, presence_gate)
        score = max(score, p)
        if p < presence_threshold:
            continue
        mask = labels == label
        found.append(Lesion(len(found) + 1, mask, area, max_diameter(mask), p))
    return found, score
