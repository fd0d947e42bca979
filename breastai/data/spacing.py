"""Pixel spacing in millimetres: where a lesion's size in mm comes from, never guessed.

Sources, in this order (the first that states a spacing wins):

1. DICOM Pixel Spacing (0028,0030): calibrated in the patient;
2. DICOM Imager Pixel Spacing (0018,1164): at the detector (projection radiography);
3. the ultrasound region calibration, Sequence of Ultrasound Regions (0018,6011): a region whose
   Physical Units X and Y Direction are both code 3 (cm) gives Physical Delta X/Y (cm per pixel)
   for the pixels inside it; the lesion's region is the one holding its centre, and a centre in
   several regions of different spacings (or in none) gives no spacing;
4. a datalist's ``pixel_size_mm`` column (square pixels; BrEaST-Lesions_USG has one).

Spacings are ``(row, column)`` in mm per pixel of the image as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Spacing", "header_spacing", "ultrasound_spacing", "lesion_spacing", "PIXEL_SIZE_COLUMN"]

PIXEL_SIZE_COLUMN = "pixel_size_mm"
_CM = 3  # Physical Units code of centimetres (PS3.3 C.8.5.5.1.15)


@dataclass(frozen=True)
class Spacing:
    """Millimetres per pixel down a column (``row_mm``) and along a row (``col_mm``), and where they come from."""

    row_mm: float
    col_mm: float
    source: str


def _positive_pair(value: Any) -> tuple[float, float] | None:
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return pair if len(pair) == 2 and all(np.isfinite(v) and v > 0 for v in pair) else None  # type: ignore[return-value]


def header_spacing(ds: Any) -> Spacing | None:
    """Pixel Spacing, else Imager Pixel Spacing, of a DICOM header (a pydicom dataset); None without either."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = _positive_pair(ds.get(key)) if ds is not None else None
        if pair is not None:
            return Spacing(pair[0], pair[1], key)
    return None


def ultrasound_spacing(ds: Any, at: tuple[float, float]) -> Spacing | None:
    """The spacing of the ultrasound region holding the point ``at`` (row, column), from a header's
    Sequence of Ultrasound Regions; None when no calibrated (cm) region holds it, or several that disagree."""
    row, col = at
    found: set[tuple[float, float]] = set()
    for region in (ds.get("SequenceOfUltrasoundRegions") or []) if ds is not None else []:
        try:
            units = int(region.get("PhysicalUnitsXDirection", -1)), int(region.get("PhysicalUnitsYDirection", -1))
            x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
            x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
            dx, dy = abs(float(region.PhysicalDeltaX)), abs(float(region.PhysicalDeltaY))
        except (AttributeError, TypeError, ValueError):  # an incomplete region calibrates nothing
            continue
        if units == (_CM, _CM) and dx > 0 and dy > 0 and x0 <= col <= x1 and y0 <= row <= y1:
            found.add((round(dy * 10.0, 9), round(dx * 10.0, 9)))
    if len(found) != 1:
        return None
    dy_mm, dx_mm = found.pop()
    return Spacing(dy_mm, dx_mm, "SequenceOfUltrasoundRegions")


def lesion_spacing(header: Any, mask: np.ndarray | None, pixel_size_mm: Any = None) -> Spacing | None:
    """The spacing that measures ``mask`` (stored geometry), from the sources in the module's order.

    Args:
        header: the image's DICOM header (pydicom dataset), or None for other files.
        mask: the lesion's boolean mask on the stored image; its centre picks the ultrasound region.
        pixel_size_mm: a datalist's ``pixel_size_mm`` value (mm per pixel, both directions), or None/"".

    Returns:
        The spacing, or None where nothing states one.
    """
    spacing = header_spacing(header)
    if spacing is None and header is not None and mask is not None and np.asarray(mask).any():
        rows, cols = np.nonzero(np.asarray(mask))
        spacing = ultrasound_spacing(header, (float(rows.mean()), float(cols.mean())))
    if spacing is None and pixel_size_mm not in (None, ""):
        pair = _positive_pair((pixel_size_mm, pixel_size_mm))
        if pair is not None:
            spacing = Spacing(pair[0], pair[1], PIXEL_SIZE_COLUMN)
    return spacing
