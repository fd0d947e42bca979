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

__all__ = [
    "check_finite","ImageReadError", "register_reader", "load_image", "IMAGE_SUFFIXES", "image_suffix", "image_stem", "to_grey",
           "DEFAULT_MAX_PIXELS", "MAX_PIXELS_KEY", "max_pixels_option", "check_declared_size", "frame_options"]

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm"}
# ".nii.gz" as one suffix: a bare ".gz" would make any gzip file (notes.csv.gz) an image.
IMAGE_SUFFIXES = PIL_SUFFIXES | {".nii", ".nii.gz", ".dcm", ".dicom"}

# The most pixels one decode may produce unless ``reader_options["max_pixels"]`` says otherwise.
# ``breastai predict`` with Grad-CAM++ maps peaks at about 1 GB plus 19 bytes per source pixel
# (benchmarks/bench_memory.py: 1.5 GB on a 5355 x 4915 mammogram), so 50 M pixels come to about
# 2 GB: the largest full-field mammograms (26.3 M pixels) pass with room to spare, while a small
# file that declares a huge image (a 13000 x 13000 PNG of 186 KB) is refused from its header
# instead of taking gigabytes.
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_KEY = "max_pixels"


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

    ``read(path, max_pixels=..., **options)`` returns ``(array2d_float32, meta)``; ``options`` are
    the entry ``reader_options[name]`` given to :func:`load_image`, and ``max_pixels`` the size
    limit (:func:`max_pixels_option`), which the reader checks against the file's header with
    :func:`check_declared_size` before it decodes a pixel.
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


def frame_options(reader_options: dict[str, Any] | None, frame: int | None) -> dict[str, Any]:
    """``reader_options`` that read frame ``frame`` of a multi-frame DICOM (unchanged for None)."""
    options = dict(reader_options or {})
    if frame is not None:
        options["dicom"] = {**options.get("dicom", {}), "frame": int(frame)}
    return options


def max_pixels_option(reader_options: dict[str, Any] | None) -> int:
    """The size limit of ``reader_options`` (its top-level ``max_pixels``), or the default.

    Raises:
        ImageReadError: the value is not a positive whole number.
    """
    value = (reader_options or {}).get(MAX_PIXELS_KEY, DEFAULT_MAX_PIXELS)
    # YAML reads 1e8 as text and 1.0e8 as a float: both are accepted where they are whole numbers.
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not number.is_integer() or number < 1:
        raise ImageReadError(f"reader option {MAX_PIXELS_KEY} must be a positive whole number of pixels, got {value!r}")
    return int(number)


def check_declared_size(path: str | Path, declared: str, pixels: int, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, before any decoding.

    Args:
        path: the file, named in the message.
        declared: the size as the header states it, e.g. ``"13000x13000 pixels (width x height)"``.
        pixels: the number of pixels decoding would produce.
        max_pixels: the limit (:func:`max_pixels_option`).

    Raises:
        ImageReadError: ``pixels`` is over the limit; the message says how to raise it.
    """
    if pixels > max_pixels:
        raise ImageReadError(
            f"{path}: header declares {declared} = {pixels:,} pixels, over the limit of {max_pixels:,} "
            f"(reader option {MAX_PIXELS_KEY}); refused before decoding, as memory grows with the pixel count. "
            f"For a genuine image this large, raise the limit: data.reader_options.{MAX_PIXELS_KEY}=N in the "
            f"config (a checkpoint keeps it for predict), or reader_options={{'{MAX_PIXELS_KEY}': N}} in Python")

def check_finite(img: np.ndarray, source: str) -> None:
    """Refuse an image with NaN or infinite pixels (a float TIFF or NIfTI can hold them): scored with
    them replaced, it would give an answer about another image.

    Raises:
        ImageReadError: naming ``source`` and how many pixels are not finite.
    """
    bad = img.size - int(np.count_nonzero(np.isfinite(img)))
    if bad:
        raise ImageReadError(f"{source}: {bad} of {img.size} pixels are not finite (NaN or infinite); "
                             "refused rather than scored with them replaced")


def load_image(
    path: str | Path, reader_options: dict[str, dict[str, Any]] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read any supported image as a 2D float32 grey array.

    Args:
        path: the file.
        reader_options: per-reader keyword options, e.g. ``{"dicom": {"window_index": 1}}``, and
            the top-level ``max_pixels``: the most pixels the header may declare (default
            :data:`DEFAULT_MAX_PIXELS`), for every reader.

    Raises:
        ImageReadError: missing, unsupported, unreadable, empty or too large file.
    """
    path = Path(path)
    limit = max_pixels_option(reader_options)
    if not path.is_file():
        raise ImageReadError(f"{path}: " + ("not a regular file (a folder, FIFO or device)" if path.exists()
                                            else "file not found"))
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    for reader in _READERS:
        if reader.accepts(path):
            arr, meta = reader.read(path, max_pixels=limit, **(reader_options or {}).get(reader.name, {}))
            break
    else:
        raise ImageReadError(f"{path}: unsupported file type {path.suffix!r}")
    if arr.size == 0 or min(arr.shape) < 1:
        raise ImageReadError(f"{path}: image has no pixels (shape {arr.shape})")
    meta.setdefault("reader", reader.name)
    meta["source_shape"] = tuple(int(s) for s in arr.shape)
    return arr, meta
