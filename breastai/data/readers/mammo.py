"""Mammography geometry: breast region, canonical orientation, and the way back.

Everything here works on already-windowed images in [0, 1] (dense tissue bright, background
near 0), usually a downsampled copy, so it stays cheap on 5000-pixel detector images. The
geometry found here is applied by :mod:`breastai.data.readers.dicom` to the full-resolution pixels and
recorded (``crop_box`` in the original pixel grid, ``flipped_lr``) so that any map computed
on the processed image can be put back on the original with :func:`undo_geometry`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["otsu_threshold", "breast_mask", "breast_box", "chest_wall_side", "decide_flip"]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape, finite), computed on a ``bins`` histogram."""
    v = np.asarray(values, dtype=np.float32).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def breast_mask(small: np.ndarray) -> np.ndarray:
    """Largest bright connected region of a small windowed mammogram (boolean, same shape).

    Otsu separates breast from background; half the Otsu level is used so that the faint fatty
    tissue near the skin line stays inside. Burnt-in labels and markers are separate small
    components and are dropped by keeping only the largest component.
    """
    img = np.asarray(small, dtype=np.float32)
    if img.size == 0 or float(img.max()) <= float(img.min()):
        return np.zeros(img.shape, dtype=bool)
    t = otsu_threshold(img)
    base = float(np.percentile(img, 1))
    fg = img > base + 0.5 * (t - base)
    fg = ndimage.binary_opening(fg, iterations=1)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(img.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def breast_box(
    mask: np.ndarray, scale: tuple[float, float], full_shape: tuple[int, int], margin: float = 0.02
) -> tuple[int, int, int, int] | None:
    """Bounding box ``(r0, r1, c0, c1)`` (half-open) of ``mask`` in full-resolution pixels.

    Args:
        mask: breast mask on the downsampled grid.
        scale: full-resolution pixels per mask pixel along rows and columns.
        full_shape: (rows, cols) of the full-resolution image; the box is clipped to it.
        margin: extra border as a fraction of the full image size, so a coarse mask never
            clips the skin line.

    Returns:
        None when the mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    h, w = full_shape
    mr, mc = int(round(margin * h)), int(round(margin * w))
    r0 = max(0, int(np.floor(rows[0] * scale[0])) - mr)
    r1 = min(h, int(np.ceil((rows[-1] + 1) * scale[0])) + mr)
    c0 = max(0, int(np.floor(cols[0] * scale[1])) - mc)
    c1 = min(w, int(np.ceil((cols[-1] + 1) * scale[1])) + mc)
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, r1, c0, c1


def chest_wall_side(mask: np.ndarray) -> tuple[str | None, float]:
    """Which image side the chest wall is on, judged from the breast mask.

    The breast is widest at the chest wall and narrows to the nipple, so the outer quarter of
    columns holding more breast pixels is the chest-wall side.

    Returns:
        ``("left" | "right" | None, confidence)`` with confidence in [0, 1]
        (normalised difference of the two quarters); None when the mask is empty.
    """
    if not mask.any():
        return None, 0.0
    q = max(1, mask.shape[1] // 4)
    left = float(mask[:, :q].sum())
    right = float(mask[:, -q:].sum())
    total = left + right
    if total == 0:
        return None, 0.0
    conf = abs(left - right) / total
    return ("left" if left >= right else "right"), conf


def decide_flip(
    patient_orientation: Any, laterality: str | None, mask: np.ndarray | None
) -> tuple[bool, str, str | None]:
    """Decide whether to mirror an image so that the chest wall ends up on the left.

    Priority: the column direction of PatientOrientation (``A`` means columns run towards the
    nipple, so the chest wall is already left; ``P`` means it is on the right), then laterality
    (right breasts are displayed chest wall right by convention), then image content.

    Returns:
        ``(flip, source, warning)``; ``warning`` is set when the header decision contradicts a
        confident content estimate (a mislabelled or site-flipped image).
    """
    flip: bool | None = None
    source = "none"
    try:
        col_dir = str(list(patient_orientation)[0]).upper() if patient_orientation else ""
    except TypeError:
        col_dir = ""
    if "A" in col_dir and "P" not in col_dir:
        flip, source = False, "PatientOrientation"
    elif "P" in col_dir and "A" not in col_dir:
        flip, source = True, "PatientOrientation"
    elif laterality in ("L", "R"):
        flip, source = laterality == "R", "laterality"
    side, conf = chest_wall_side(mask) if mask is not None else (None, 0.0)
    if flip is None:
        if side is None:
            return False, "none", None
        return side == "right", "content", None
    warning = None
    if side is not None and conf > 0.5 and (side == "right") != flip:
        warning = (
            f"header ({source}) puts the chest wall on the {'right' if flip else 'left'} but the "
            f"image content suggests the {side}; header followed"
        )
    return flip, source, warning






