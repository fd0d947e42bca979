"""Geometry between the stored image, the reader's grid and the network input, both ways.

Three grids: the image as STORED (what a viewer shows, where users draw masks and boxes); the
READER's grid (DICOM mammograms: cropped to the breast and mirrored chest wall left, recorded as
``crop_box`` and ``flipped_lr`` in the reader's meta); the network INPUT (a square ``box`` of the
reader's image resized to S x S).

Forward: :func:`to_reader_grid` (stored -> reader; masks and boxes go through
:func:`breastai.data.readers.masks.mask_on_reader_grid`), then :func:`square_box` and
:func:`crop_resize` (reader -> input). Back: :func:`map_to_original` (input -> stored),
:func:`undo_geometry` and :func:`reader_to_original` (reader -> stored). Both directions of the
square box cut the same image part (:func:`_box_overlap`), so a map sent back lands where its
pixels came from.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "stored_shape",
    "to_reader_grid",
    "square_box",
    "crop_resize",
    "map_to_original",
    "undo_geometry",
    "reader_to_original",
]


def stored_shape(shape: tuple[int, int], meta: dict[str, Any]) -> tuple[int, int]:
    """(rows, cols) of the image as stored: the reader's ``rows``/``cols`` if it reports them
    (DICOM), else ``shape``, the grid it returned."""
    if "rows" in meta and "cols" in meta:
        return int(meta["rows"]), int(meta["cols"])
    return tuple(int(v) for v in shape)




def _resize_bilinear(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if arr.shape == shape:
        return arr.astype(np.float32, copy=False)
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))  # float32 -> mode "F"
    return np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def undo_geometry(map2d: np.ndarray, image: Any, fill: float = 0.0) -> np.ndarray:
    """Put a map computed on a processed image back on the original pixel grid.

    Args:
        map2d: (H, W) map (or (F, H, W) for multi-frame) on the processed image, possibly at a
            lower resolution (e.g. a 224x224 saliency map); it is resized bilinearly to the
            crop size first.
        image: the :class:`~breastai.data.dicom.DicomImage` (or its ``meta`` dict) the map
            was computed on; needs ``flipped_lr``, ``crop_box`` and the original shape.
        fill: value outside the crop box.

    Returns:
        float32 array of the original (rows, cols) (or (F, rows, cols)).
    """
    meta: Mapping[str, Any] = image if isinstance(image, Mapping) else image.meta
    flipped = bool(meta.get("flipped_lr", False) if isinstance(image, Mapping) else image.flipped_lr)
    box = meta.get("crop_box") if isinstance(image, Mapping) else image.crop_box
    orig = (int(meta["rows"]), int(meta["cols"]))
    arr = np.asarray(map2d, dtype=np.float32)
    if arr.ndim == 3:
        return np.stack([undo_geometry(m, image, fill) for m in arr])
    if arr.ndim != 2:
        raise ValueError(f"undo_geometry: expected a 2D or 3D map, got shape {arr.shape}")
    r0, r1, c0, c1 = box if box is not None else (0, orig[0], 0, orig[1])
    arr = _resize_bilinear(arr, (r1 - r0, c1 - c0))
    if flipped:
        arr = arr[:, ::-1]
    out = np.full(orig, fill, dtype=np.float32)
    out[r0:r1, c0:c1] = arr
    return out


def to_reader_grid(arr: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Move a (rows, cols) array on the original pixel grid onto the grid the reader returned.

    The inverse of :func:`undo_geometry` at full resolution: keep the reader's ``crop_box``
    ``(r0, r1, c0, c1)``, then mirror if ``flipped_lr``. Used for masks and boxes, which a user
    draws on the image as stored (what a DICOM viewer shows).
    """
    out = np.asarray(arr)
    box = meta.get("crop_box")
    if box is not None:
        r0, r1, c0, c1 = (int(v) for v in box)
        out = out[r0:r1, c0:c1]
    if meta.get("flipped_lr"):
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def square_box(mask: np.ndarray | None, shape: tuple[int, int], mode: str, margin: float, min_side: int,
               min_fraction: float = 0.0) -> np.ndarray:
    """Square region ``[r0, c0, side]`` of the reader's image to feed the network.

    ``whole``: the centred square that holds the whole image (the short side is padded).
    ``crop``: the lesion's bounding box grown by ``margin`` of its longer side on each side,
    at least ``min_side`` pixels and at least ``min_fraction`` of the image's shorter side,
    centred on the lesion. The square may extend past the image; the outside is zero-padded, so
    lesion shape and scale are never distorted.

    A crop that always grows with the lesion shows every lesion at the same size, and size is
    itself a malignancy sign (docs/experiments.md); a floor relative
    to the image keeps small lesions small in the network input.

    Args:
        mask: (H, W) boolean lesion mask on the reader's grid, or None (whole image).
        shape: (H, W) of the reader's image.
        mode: ``whole`` or ``crop``; ``crop`` without a lesion falls back to ``whole``.
        margin: crop margin, a fraction of the lesion box's longer side.
        min_side: smallest crop side in pixels.
        min_fraction: smallest crop side as a fraction of the image's shorter side.

    Returns:
        int64 ``[r0, c0, side]``; :func:`crop_resize` cuts it, :func:`map_to_original` undoes it.
    """
    h, w = shape
    if mode == "whole" or mask is None or not mask.any():
        side = max(h, w)
        return np.array([(h - side) // 2, (w - side) // 2, side], dtype=np.int64)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = int(round(max(r1 - r0, c1 - c0) * (1 + 2 * margin)))
    side = max(side, min_side, int(round(min_fraction * min(h, w))))
    rc, cc = (r0 + r1) / 2, (c0 + c1) / 2
    return np.array([int(round(rc - side / 2)), int(round(cc - side / 2)), side], dtype=np.int64)


def _box_overlap(box: np.ndarray | tuple[int, int, int], shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """The part of the square ``box`` ``[r0, c0, side]`` that lies on an image of ``shape``.

    Returns:
        ``(on_image, on_box)``: (rows, cols) slices of that part in image and in box
        coordinates, or None where the box misses the image.
    """
    r0, c0, side = (int(v) for v in box)
    h, w = (int(s) for s in shape)
    rs, re, cs, ce = max(r0, 0), min(r0 + side, h), max(c0, 0), min(c0 + side, w)
    if re <= rs or ce <= cs:
        return None
    return (slice(rs, re), slice(cs, ce)), (slice(rs - r0, re - r0), slice(cs - c0, ce - c0))


def crop_resize(x: np.ndarray, box: np.ndarray | tuple[int, int, int], size: int, mode: str) -> np.ndarray:
    """Cut the square ``box`` from (C, H, W) ``x`` with zero padding and resize it to ``size``.

    Args:
        x: (C, H, W) array on the reader's grid.
        box: ``[r0, c0, side]`` from :func:`square_box`.
        size: side S of the network input.
        mode: ``torch.nn.functional.interpolate`` mode (``bilinear`` or ``nearest``).

    Returns:
        float32 (C, S, S).
    """
    side = int(box[2])
    out = np.zeros((x.shape[0], side, side), dtype=np.float32)
    part = _box_overlap(box, x.shape[1:])
    if part is not None:
        (rows, cols), (box_rows, box_cols) = part
        out[:, box_rows, box_cols] = x[:, rows, cols]
    t = torch.from_numpy(out)[None]
    if side > 2 * size and mode != "nearest":
        # Anti-aliasing for strong downsampling (mammograms): area interpolation.
        t = F.interpolate(t, size=(size, size), mode="area")
    else:
        t = F.interpolate(t, size=(size, size), mode=mode, align_corners=False if mode == "bilinear" else None)
    return t[0].numpy()


def map_to_original(
    map_ss: np.ndarray | torch.Tensor,
    box: np.ndarray | tuple[int, int, int],
    image_shape: tuple[int, int],
    reader_meta: Mapping[str, Any] | None = None,
    fill: float = 0.0,
) -> np.ndarray:
    """Send a map on the S x S network input back to the ORIGINAL image geometry.

    Args:
        map_ss: (S, S) map on the network input.
        box: ``[r0, c0, side]``, the square of the reader's image that was resized to S x S
            (may extend past the image; that part is dropped).
        image_shape: (H, W) of the reader's output image (what the preprocessing saw).
        reader_meta: the reader's meta; for DICOM it holds ``crop_box`` (r0, r1, c0, c1 in the
            original grid), ``flipped_lr`` and ``rows``/``cols``, which are undone last.
        fill: value where the map has no data (outside the box / the reader's crop).

    Returns:
        float32 (rows, cols) of the original image.
    """
    side = int(box[2])
    h, w = (int(s) for s in image_shape)
    t = torch.as_tensor(np.asarray(map_ss, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()
    out = np.full((h, w), fill, dtype=np.float32)
    part = _box_overlap(box, (h, w))  # the image part crop_resize cut: the rest of the box was padding
    if part is not None:
        (rows, cols), (box_rows, box_cols) = part
        out[rows, cols] = t[box_rows, box_cols]
    meta = dict(reader_meta or {})
    if meta.get("flipped_lr") or meta.get("crop_box") is not None:
        meta.setdefault("rows", h)
        meta.setdefault("cols", w)
        out = undo_geometry(out, meta, fill=fill)
    return out


def reader_to_original(arr: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """An array on the reader's output grid back on the original grid (undo DICOM crop/flip)."""
    arr = np.asarray(arr, dtype=np.float32)
    if not (meta.get("flipped_lr") or meta.get("crop_box") is not None):
        return arr
    return undo_geometry(arr, {"rows": arr.shape[0], "cols": arr.shape[1], **meta})
