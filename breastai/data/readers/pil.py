"""The PIL reader: PNG, JPEG, TIFF, BMP, PGM as grey (palette transparency and alpha kept for masks)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from breastai.data.readers.registry import (
    DEFAULT_MAX_PIXELS,
    PIL_SUFFIXES,
    ImageReadError,
    check_declared_size,
    register_reader,
    to_grey,
)

__all__: list[str] = []  # registers the "pil" reader of load_image; nothing to import


def _read_pil(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, **_: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Our own limit governs; Pillow's bomb warning (over 89 M pixels) would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im_file = Image.open(path)
        with im_file as im:
            # Image.open reads the header only: the size is known before a pixel is decoded.
            width, height = im.size
            check_declared_size(path, f"{width}x{height} pixels (width x height)", width * height, max_pixels)
            im.load()
            mode = im.mode
            if mode == "PA" or (mode in ("P", "L", "RGB") and "transparency" in im.info):  # a tRNS colour is alpha
                im = im.convert("RGBA")
            elif mode == "P":
                im = im.convert("RGB")
            elif mode.startswith("I;16"):
                im = im.convert("I")
            elif mode not in ("1", "L", "LA", "I", "F", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, ... as RGB, not as channels
                im = im.convert("RGB")
            arr = np.asarray(im)
    except Image.DecompressionBombError as exc:  # over twice Pillow's MAX_IMAGE_PIXELS, whatever our limit
        raise ImageReadError(f"{path}: Pillow refuses an image this large ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: truncated or corrupt image ({exc})") from exc
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    return to_grey(arr, path), {"format": "pil", "mode": mode, "channels": channels, "alpha": channels in (2, 4)}


register_reader("pil", lambda p: p.suffix.lower() in PIL_SUFFIXES, _read_pil)
