"""Radiomics of datalist rows for the radiomics and fusion models: computed once, cached, selected.

Features come from the ORIGINAL image (grey, intensity-normalised with the run's preprocessing
settings, i.e. :class:`~breastai.data.transforms.NormalizeIntensityRobustd`) and its lesion mask,
through :func:`breastai.radiomics.extract_features` (2D, fixed bin number, default families).
They are cached in memory per row, keyed by a hash of image path, its mtime, the mask paths and
their mtimes, and the settings, so cross-validation folds reuse them; with ``data.cache: disk``
they are also kept in an ``.npz`` in the cache folder.

Feature selection and standardisation (:func:`select_features`) and the closed-form logistic
regression (:func:`fit_logistic`) only ever see the training part.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from breastai.radiomics.extract import (
    RadiomicsInputError,
    default_families,
    extract_features,
)

__all__ = ["radiomics_settings", "compute_radiomics", "attach_radiomics", "clear_cache"]

_FORMAT = 1  # bump when the way features are computed here changes
_MEMORY: dict[str, np.ndarray] = {}  # row key -> float64 feature vector
_NAMES: dict[str, list[str]] = {}  # settings hash -> feature names


def clear_cache() -> None:
    """Forget the in-memory feature cache (tests)."""
    _MEMORY.clear()
    _NAMES.clear()




def radiomics_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes the feature values, as a JSON-able dict."""
    pre = cfg["preprocess"]
    return {
        "format": _FORMAT,
        "n_bins": int(cfg["model"].get("radiomics_bins", 32)),
        "discretisation": "fbn",
        "aggregation": "2d",
        "families": list(default_families()),
        "normalize": pre["normalize"],
        "percentiles": [float(v) for v in pre["percentiles"]],
        "reader_options": cfg["data"].get("reader_options") or {},
    }


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _mtime(p: Any) -> int:
    try:
        return os.stat(p).st_mtime_ns
    except OSError:
        return -1  # unreadable: loading reports it, naming the row


def _row_key(rec: dict[str, Any], shash: str) -> str:
    img = rec["image"]
    if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__"):
        src: Any = [str(img), _mtime(img)]
    else:  # in-memory array (inference API): key by content
        src = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()
    masks = rec.get("mask")
    if isinstance(masks, (list, tuple)):
        msk: Any = [[str(m), _mtime(m)] for m in masks]
    elif masks is None or isinstance(masks, str):
        msk = [[masks, _mtime(masks)]] if masks else []
    else:
        msk = hashlib.sha256(np.ascontiguousarray(masks).tobytes()).hexdigest()
    # A multi-frame row (data.reader_options.dicom.frame: all) is one sample per frame.
    return _hash([src, msk, shash, rec.get("frame")])


def _row_name(rec: dict[str, Any]) -> str:
    img = rec["image"]
    where = str(img) if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__") else "<array>"
    return f"case {rec.get('case_id', '?')!r} ({where})"


def _device(cfg: dict[str, Any]) -> str:
    dev = str(cfg.get("device", "cpu"))
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return dev if dev.startswith("cuda") and torch.cuda.is_available() else "cpu"


def _disk_path(cfg: dict[str, Any], shash: str) -> Path | None:
    if cfg["data"].get("cache") != "disk":
        return None
    root = cfg["data"].get("cache_dir") or str(Path(cfg["output_dir"]) / ".cache")
    return Path(root) / f"radiomics-{shash[:16]}.npz"


def _load_disk(path: Path | None, shash: str) -> None:
    if path is None or not path.is_file():
        return
    try:
        with np.load(path, allow_pickle=False) as z:
            names, keys, values = [str(n) for n in z["names"]], [str(k) for k in z["keys"]], z["values"]
    except (OSError, ValueError, KeyError):
        return  # a damaged cache is recomputed, never trusted
    _NAMES.setdefault(shash, names)
    if _NAMES[shash] == names:
        _MEMORY.update({k: v for k, v in zip(keys, values) if k not in _MEMORY})


def _save_disk(path: Path, shash: str, keys: list[str]) -> None:
    from breastai.core.files import atomic_write

    atomic_write(path, lambda tmp: np.savez(tmp, names=np.array(_NAMES[shash]), keys=np.array(keys),
                                            values=np.stack([_MEMORY[k] for k in keys])), suffix=".npz")


def _lesion_crop(img: np.ndarray, mask: np.ndarray, margin: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The lesion's box plus a margin wider than any feature's neighbourhood (the local-intensity
    sphere needs 7 pixels at unit spacing), so features are unchanged while a chunk of whole
    mammograms is never held in memory at once."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, r1 = max(rows[0] - margin, 0), rows[-1] + margin + 1
    c0, c1 = max(cols[0] - margin, 0), cols[-1] + margin + 1
    return img[r0:r1, c0:c1].astype(np.float64), mask[r0:r1, c0:c1]


def compute_radiomics(cfg: dict[str, Any], records: Sequence[dict[str, Any]], chunk: int = 64) -> tuple[list[str], np.ndarray]:
    """Feature names and the ``(N, F)`` float64 matrix of ``records`` (cached; batched extraction).

    Raises:
        RadiomicsInputError: a row without a usable lesion mask; the message names the row.
        ImageReadError: an unreadable image (names the file).
    """
    from breastai.data.transforms import LoadSampled, NormalizeIntensityRobustd

    settings = radiomics_settings(cfg)
    shash = _hash(settings)
    disk = _disk_path(cfg, shash)
    _load_disk(disk, shash)
    keys = [_row_key(r, shash) for r in records]
    todo = [i for i, k in enumerate(keys) if k not in _MEMORY]
    load = LoadSampled(settings["reader_options"])
    norm = NormalizeIntensityRobustd(settings["normalize"], tuple(settings["percentiles"]))
    model = cfg["model"]["name"]
    for c0 in range(0, len(todo), chunk):
        part = todo[c0 : c0 + chunk]
        imgs, masks, names = [], [], []
        for i in part:
            rec = records[i]
            m = rec.get("mask")
            if m is None or (isinstance(m, (list, tuple, str)) and not m):
                raise RadiomicsInputError(f"{_row_name(rec)}: no lesion mask; model {model} uses lesion radiomics "
                                          "and needs a mask for every row")
            d = norm(load({k: v for k, v in rec.items() if k in ("image", "mask", "frame")}))
            if not d["has_mask"]:
                raise RadiomicsInputError(f"{_row_name(rec)}: the lesion mask is empty; model {model} needs a lesion")
            img, msk = _lesion_crop(d["image"][0], d["mask"][0] > 0.5)
            imgs.append(img)
            masks.append(msk)
            names.append(_row_name(rec))
        table = extract_features(imgs, masks, n_bins=settings["n_bins"], aggregation=settings["aggregation"],
                                 families=settings["families"], device=_device(cfg), ids=names)
        _NAMES.setdefault(shash, list(table.names))
        if _NAMES[shash] != list(table.names):
            raise RuntimeError("radiomics feature names changed within one run; clear the cache")
        for j, i in enumerate(part):
            _MEMORY[keys[i]] = table.values[j]
    if todo and disk is not None:
        _save_disk(disk, shash, [k for k in dict.fromkeys(keys)])
    if not records:
        return list(_NAMES.get(shash, [])), np.zeros((0, len(_NAMES.get(shash, []))))
    return list(_NAMES[shash]), np.stack([_MEMORY[k] for k in keys])


def radiomics_of_array(cfg: dict[str, Any], image01: np.ndarray, mask: np.ndarray,
                       expected_names: Sequence[str] | None = None) -> np.ndarray:
    """The raw feature vector of one lesion at inference: ``image01`` already normalised like the
    training images (the preprocessing preset's intensity step), ``mask`` boolean, same grid.

    Raises:
        RadiomicsInputError: empty mask, or feature names differing from those the model was trained on.
    """
    if not np.asarray(mask).any():
        raise RadiomicsInputError(f"model {cfg['model']['name']} uses lesion radiomics: the lesion mask is empty")
    settings = radiomics_settings(cfg)
    img, msk = _lesion_crop(np.asarray(image01), np.asarray(mask, dtype=bool))
    table = extract_features([img], [msk], n_bins=settings["n_bins"], aggregation=settings["aggregation"],
                             families=settings["families"], device=_device(cfg))
    if expected_names is not None and list(table.names) != list(expected_names):
        raise RadiomicsInputError("this checkpoint's radiomics features differ from this breastai's feature set; "
                                  "retrain the model with this version")
    return table.values[0].astype(np.float32)


def attach_radiomics(cfg: dict[str, Any], items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``items`` with key ``radiomics``: the float32 raw feature vector of each row."""
    _, x = compute_radiomics(cfg, items)
    return [{**it, "radiomics": x[i].astype(np.float32)} for i, it in enumerate(items)]












