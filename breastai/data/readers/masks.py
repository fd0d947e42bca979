"""Lesion masks (files, their union) and lesion boxes, moved onto the reader's grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from breastai.data.geometry import stored_shape
from breastai.data.readers.registry import MAX_PIXELS_KEY, ImageReadError, load_image

__all__ = ["load_mask", "LesionBox", "mask_on_reader_grid"]


def _mask_pixels(path: str | Path, max_pixels: int | None) -> np.ndarray:
    """Foreground of one mask file (see :func:`load_mask` for the alpha rule)."""
    arr, meta = load_image(path, None if max_pixels is None else {MAX_PIXELS_KEY: max_pixels})
    if not meta.get("alpha"):
        return arr > 0
    from PIL import Image

    with Image.open(path) as im:
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
    visible = alpha > 0
    fg = (arr > 0) & visible
    if not fg.any() and not visible.all():
        fg = visible
    return fg


def load_mask(paths: list[str] | str, shape: tuple[int, int] | None = None,
              meta: dict[str, Any] | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Union of one or more mask files as a boolean array.

    Any non-zero pixel is foreground. In a mask with an alpha channel, transparent pixels are
    background whatever their colour, and a drawing in black on a transparent layer counts by its
    alpha (no visible pixel is non-zero in colour there). With ``shape``
    (the grid the image reader returned) and the reader's ``meta``, the mask is moved onto that
    grid by :func:`mask_on_reader_grid`. Mask files go through the image readers, under the same
    size limit as their image: ``max_pixels`` (None: the readers' default).

    Raises:
        ImageReadError: unreadable or too large mask, or a mask that fits neither ``shape`` nor the
            stored image.
    """
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    out: np.ndarray | None = None
    for p in paths:
        m = _mask_pixels(p, max_pixels)
        if out is None:
            out = m
        elif m.shape != out.shape:
            raise ImageReadError(f"{p}: mask shape {m.shape} differs from the other masks {out.shape}")
        else:
            out |= m
    if out is None:
        raise ImageReadError("no mask file given")
    return out if shape is None else mask_on_reader_grid(out, shape, meta, paths[0])


@dataclass(frozen=True)
class LesionBox:
    """A lesion given by its bounding box instead of a traced mask.

    ``x0 <= x <= x1`` (columns) and ``y0 <= y <= y1`` (rows), inclusive, in pixels of the image
    as stored (for DICOM: the original pixel grid, before any breast crop or flip by the reader).
    A crop-mode model trained with coarse outlines (``augment.coarse_outline``) reads it as it
    saw boxes in training; one trained on traced outlines only loses much of its accuracy.
    """

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def parse(cls, text: str) -> "LesionBox":
        """``"X0,Y0,X1,Y1"`` -> box.

        Raises:
            ValueError: not four integers, or a corner after the opposite one.
        """
        parts = [p.strip() for p in str(text).split(",")]
        try:
            x0, y0, x1, y1 = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"box {text!r}: expected four integers X0,Y0,X1,Y1 (pixels, inclusive)") from None
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {text!r}: X1 must be >= X0 and Y1 >= Y0")
        return cls(x0, y0, x1, y1)

    @classmethod
    def around(cls, mask: np.ndarray) -> "LesionBox":
        """The tightest box holding every pixel of a 2-D ``mask`` (in that mask's pixels).

        Raises:
            ValueError: the mask is empty.
        """
        m = np.asarray(mask) > 0
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size == 0:
            raise ValueError("an empty mask has no box")
        return cls(int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))

    def to_mask(self, shape: tuple[int, int], meta: dict[str, Any] | None = None, source: str = "image") -> np.ndarray:
        """The filled box as a boolean mask on the reader's grid of ``shape``.

        The box is drawn on the stored image (``meta``'s ``rows`` x ``cols`` where the reader
        reports them, else ``shape``) and moved like any mask by :func:`mask_on_reader_grid`.

        Raises:
            ImageReadError: the box lies outside the image (or outside the reader's crop).
        """
        meta = meta or {}
        stored = stored_shape(shape, meta)
        mask = np.zeros(stored, dtype=bool)
        mask[max(self.y0, 0):max(self.y1 + 1, 0), max(self.x0, 0):max(self.x1 + 1, 0)] = True
        mask = mask_on_reader_grid(mask, shape, meta, source)
        if not mask.any():
            where = " or outside the part the reader kept" if meta.get("crop_box") is not None else ""
            raise ImageReadError(f"{source}: box {self.x0},{self.y0},{self.x1},{self.y1} lies outside the image "
                                 f"({stored[1]} x {stored[0]} pixels{where})")
        return mask


def mask_on_reader_grid(mask: np.ndarray, shape: tuple[int, int], meta: dict[str, Any] | None = None,
                        source: str = "mask") -> np.ndarray:
    """A boolean lesion mask on the grid of the image the reader returned (``shape``).

    Masks are drawn on the image as stored. Where the reader cropped or mirrored it (DICOM
    mammograms: breast crop, chest wall to the left), a mask of the stored size is moved the same
    way (:func:`breastai.data.geometry.to_reader_grid`); one already of the returned size is taken as is.

    Raises:
        ImageReadError: the mask fits neither size (``source`` names the mask).
    """
    meta = meta or {}
    mask = np.asarray(mask) > 0
    stored = stored_shape(shape, meta)
    moved = meta.get("crop_box") is not None or bool(meta.get("flipped_lr"))
    if moved and mask.shape == stored:
        from breastai.data.geometry import to_reader_grid

        return to_reader_grid(mask, meta)
    if mask.shape == tuple(shape):
        return mask
    sizes = f"image shape {tuple(shape)}" + (f" (stored {stored})" if stored != tuple(shape) else "")
    raise ImageReadError(f"{source}: mask shape {mask.shape} does not match {sizes}")
