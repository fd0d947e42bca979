"""The NIfTI reader: a 2D slice as (rows, columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from breastai.data.readers.registry import DEFAULT_MAX_PIXELS, ImageReadError, check_declared_size, register_reader

__all__: list[str] = []  # registers the "nifti" reader of load_image; nothing to import


def _read_nifti(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, **_: Any) -> tuple[np.ndarray, dict[str, Any]]:
    import nibabel as nib

    try:
        img = nib.load(str(path))  # the header only: dataobj is read below
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise ImageReadError(f"{path}: cannot read NIfTI ({exc})") from exc
    shape = tuple(int(s) for s in img.shape if s != 1)
    if len(shape) != 2:
        raise ImageReadError(f"{path}: NIfTI has shape {shape}; a 2D image is expected")
    check_declared_size(path, f"{shape[0]}x{shape[1]} voxels (x by y)", shape[0] * shape[1], max_pixels)
    try:
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # truncated or corrupt data: nibabel and numpy raise many types
        raise ImageReadError(f"{path}: cannot read NIfTI ({exc})") from exc
    # NIfTI stores (x, y); images here are (rows, columns).
    return np.squeeze(arr).T.copy(), {"format": "nifti"}


def _is_nifti(p: Path) -> bool:
    name = p.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


register_reader("nifti", _is_nifti, _read_nifti)
