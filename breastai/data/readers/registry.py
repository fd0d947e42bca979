"""Image and mask readers behind one pluggable entry point.

Every reader returns a 2D ``float32`` grey array (rows, columns) in the file's own intensity
units plus a metadata dict. Readers are tried in registration order; the first whose
``accepts(path)`` is true reads the file. The reader modules register themselves when
:mod:`breastai.data.readers` imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["ImageReadError", "register_reader", "load_image", "IMAGE_SUFFIXES", "image_suffix", "image_stem", "to_grey"]

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm"}
# ".nii.gz" as one suffix: a bare ".gz" would make any gzip file (notes.csv.gz) an image.
IMAGE_SUFFIXES = PIL_SUFFIXES | {".nii", ".nii.gz", ".dcm", ".dicom"}




def image_suffix(path: str | Path) -> str:
    """Lower-case suffix with ``.nii.gz`` kept together."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def image_stem(path: str | Path) -> str:
    """The file name without its image suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    return name[: len(name) - len(image_suffix(name))]


class ImageReadError(ValueError):
    """A file cannot be read as an image; the message names the file and the problem."""


@dataclass
class _Reader:
    name: str
    accepts: Callable[[Path], bool]
    read: Callable[..., tuple[np.ndarray, dict[str, Any]]]


_READERS: list[_Reader] = []


def register_reader(
    name: str,
    accepts: Callable[[Path], bool],
    read: Callable[..., tuple[np.ndarray, dict[str, Any]]],
    first: bool = False,
) -> None:
    """Add a reader.

    ``read(path, **options)`` returns ``(array2d_float32, meta)``; ``options`` are the
    entry ``reader_options[name]`` given to :func:`load_image`.
    """
    reader = _Reader(name, accepts, read)
    _READERS[:] = [r for r in _READERS if r.name != name]
    _READERS.insert(0, reader) if first else _READERS.append(reader)


def to_grey(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """(H, W) float32 grey from grey, grey+alpha, RGB or RGBA arrays (ITU-R 601 luma)."""
    if arr.ndim == 2:
        return arr.astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        # ITU-R 601 luma, the same weights PIL uses for "L".
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        return arr[..., 0].astype(np.float32)
    raise ImageReadError(f"{path}: unsupported array shape {arr.shape} for a 2D image")











def load_image(
    path: str | Path, reader_options: dict[str, dict[str, Any]] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read any supported image as a 2D float32 grey array.

    Args:
        path: the file.
        reader_options: per-reader keyword options, e.g. ``{"dicom": {"window_index": 1}}``.

    Raises:
        ImageReadError: missing, unsupported, unreadable or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: " + ("not a regular file (a folder, FIFO or device)" if path.exists()
                                            else "file not found"))
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    for reader in _READERS:
        if reader.accepts(path):
            arr, meta = reader.read(path, **(reader_options or {}).get(reader.name, {}))
            break
    else:
        raise ImageReadError(f"{path}: unsupported file type {path.suffix!r}")
    if arr.size == 0 or min(arr.shape) < 1:
        raise ImageReadError(f"{path}: image has no pixels (shape {arr.shape})")
    meta.setdefault("reader", reader.name)
    meta["source_shape"] = tuple(int(s) for s in arr.shape)
    return arr, meta










