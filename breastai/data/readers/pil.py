"""The PIL reader: PNG, JPEG, TIFF, BMP, PGM as grey (palette transparency and alpha kept for masks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from breastai.data.readers.registry import (
    PIL_SUFFIXES,
    ImageReadError,
    register_reader,
    to_grey,
)


def _read_pil(path: Path, **_: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
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
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: truncated or corrupt image ({exc})") from exc
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    return to_grey(arr, path), {"format": "pil", "mode": mode, "channels": channels, "alpha": channels in (2, 4)}


register_reader("pil", lambda p: p.suffix.lower() in PIL_SUFFIXES, _read_pil)
