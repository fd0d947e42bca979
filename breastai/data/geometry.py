"""Geometry between the stored image, the reader's grid and the network input, both ways.

Three grids: the image as STORED (what a viewer shows, where users draw masks and boxes); the
READER's grid (DICOM mammograms: cropped to the breast and mirrored chest wall left, recorded as
``crop_box`` and ``flipped_lr`` in the reader's meta); the network INPUT (a square ``box`` of the
reader's image resized to S x S). Forward: :func:`to_reader_grid` (masks and boxes: :func:`breastai.data.readers.masks.mask_on_reader_grid`).
Back: :func:`map_to_original` (input -> stored), :func:`undo_geometry` and :func:`reader_to_original`
(reader -> stored).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F


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
    r0, c0, side = (int(v) for v in box)
    h, w = (int(s) for s in image_shape)
    t = torch.as_tensor(np.asarray(map_ss, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()
    out = np.full((h, w), fill, dtype=np.float32)
    rs, re, cs, ce = max(r0, 0), min(r0 + side, h), max(c0, 0), min(c0 + side, w)
    if re > rs and ce > cs:
        out[rs:re, cs:ce] = t[rs - r0 : re - r0, cs - c0 : ce - c0]
    meta = dict(reader_meta or {})
    if meta.get("flipped_lr") or meta.get("crop_box") is not None:
        from breastai.data.geometry import undo_geometry

        meta.setdefault("rows", h)
        meta.setdefault("cols", w)
        out = undo_geometry(out, meta, fill=fill)
    return out


def reader_to_original(arr: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """An array on the reader's output grid back on the original grid (undo DICOM crop/flip)."""
    arr = np.asarray(arr, dtype=np.float32)
    if not (meta.get("flipped_lr") or meta.get("crop_box") is not None):
        return arr
    from breastai.data.geometry import undo_geometry

    return undo_geometry(arr, {"rows": arr.shape[0], "cols": arr.shape[1], **meta})
