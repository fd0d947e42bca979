"""The NIfTI reader: a 2D slice as (rows, columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from breastai.data.readers.registry import ImageReadError, register_reader


def _read_nifti(path: Path, **_: Any) -> tuple[np.ndarray, dict[str, Any]]:
    import nibabel as nib

    try:
        arr = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise ImageReadError(f"{path}: cannot read NIfTI ({exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: NIfTI has shape {arr.shape}; a 2D image is expected")
    # NIfTI stores (x, y); images here are (rows, columns).
    return arr.T.copy(), {"format": "nifti"}


def _is_nifti(p: Path) -> bool:
    name = p.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


register_reader("nifti", _is_nifti, _read_nifti)
