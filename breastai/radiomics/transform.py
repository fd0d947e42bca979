"""Lesion radiomics as a MONAI dictionary transform, cached per datalist row.

:class:`RadiomicsFeaturesd` belongs in the preprocessing preset's ``full_image`` slot (see
:func:`breastai.data.transforms.deterministic_transforms`): there it sees the intensity-normalised
image at full resolution and its lesion mask on the same grid, so the image a Dataset decodes for
the network is the one the features are measured on, and nothing decodes it a second time.

The feature vector of a lesion is :func:`breastai.radiomics.extract_features` of its
:func:`lesion_crop`: 2D, the default families, and texture and histogram features on grey levels
of a fixed bin number ``N_g = n_bins`` over the lesion's own range (IBSI FBN),
``x_d = floor(N_g (x - X_min) / (X_max - X_min)) + 1`` (``x_d = N_g`` at ``X_max``). Every
feature's IBSI definition and formula is in :func:`breastai.radiomics.feature_docs`.

Vectors are cached in memory per row, keyed by :meth:`RadiomicsFeaturesd.row_key`: a hash of the
image path and its mtime (or the array's bytes), the mask paths and their mtimes, the frame and
:func:`radiomics_settings`, so cross-validation folds and epochs reuse them. With a ``cache_file``
(``data.cache: disk``) they are also kept in an ``.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch

from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from breastai.core.distributed import resolve_device
from breastai.radiomics.extract import RadiomicsInputError, default_families, extract_features

__all__ = [
    "RadiomicsFeaturesd",
    "radiomics_settings",
    "radiomics_transform",
    "lesion_crop",
    "clear_cache",
]

_FORMAT = 1  # bump when the way features are computed here changes
_MEMORY: dict[str, dict[str, np.ndarray]] = {}  # settings hash -> row key -> float64 feature vector
_NAMES: dict[str, list[str]] = {}  # settings hash -> feature names


def clear_cache() -> None:
    """Forget the in-memory feature cache (tests)."""
    _MEMORY.clear()
    _NAMES.clear()


def radiomics_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything in a run's config that changes the feature values, as a JSON-able dict."""
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


def radiomics_transform(cfg: dict[str, Any], disk: bool = True) -> RadiomicsFeaturesd:
    """The transform of a run: its settings, device and, with ``data.cache: disk`` and ``disk``,
    its ``.npz`` cache."""
    settings = radiomics_settings(cfg)
    cache_file = None
    if disk and cfg["data"].get("cache") == "disk":
        root = cfg["data"].get("cache_dir") or str(Path(cfg["output_dir"]) / ".cache")
        cache_file = Path(root) / f"radiomics-{_hash(settings)[:16]}.npz"
    return RadiomicsFeaturesd(settings, device=_device(cfg), cache_file=cache_file,
                              consumer=f"model {cfg['model']['name']}")


def lesion_crop(img: np.ndarray, mask: np.ndarray, margin: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The (H, W) lesion's bounding box plus ``margin`` pixels, as float64 image and boolean mask.

    The margin is wider than any feature's neighbourhood (the local-intensity sphere of 1 cm^3,
    radius ``r = (3 / (4 pi))^(1/3) cm``, needs 7 pixels at unit spacing), so features are those of
    the whole image, while a chunk of whole mammograms is never held in memory at once.
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, r1 = max(rows[0] - margin, 0), rows[-1] + margin + 1
    c0, c1 = max(cols[0] - margin, 0), cols[-1] + margin + 1
    return img[r0:r1, c0:c1].astype(np.float64), mask[r0:r1, c0:c1]


class RadiomicsFeaturesd(MapTransform):
    """Lesion feature vector of each image key, under its output key (default ``radiomics``).

    Input: ``d[key]`` and ``d[mask_key]`` channel-first ``(1, H, W)`` arrays on one grid, the image
    intensity-normalised (:class:`~breastai.data.transforms.NormalizeIntensityRobustd`). Output:
    ``d[output_key]``, the float32 raw vector of :func:`extract_features` on :func:`lesion_crop`
    (names in :attr:`names`). A row given a key by :meth:`keyed` (field ``<output_key>_key``, which
    the transform consumes) is computed once and then served from the cache.

    Args:
        settings: :func:`radiomics_settings`; ``n_bins``, ``aggregation`` and ``families`` set the
            extraction, all of it the cache key.
        keys: image keys.
        mask_key: the lesion mask's key, shared by all image keys.
        output_keys: one output key per image key.
        device: torch device of the extraction.
        cache_file: ``.npz`` the cache is read from now and written to by :meth:`save`.
        consumer: who needs the features, for the errors (``"model fusion_gated"``).
        allow_missing_keys: skip image keys the sample lacks.

    Raises:
        RadiomicsInputError: an empty lesion mask, naming the row (``__call__``); a row without a
            mask (:meth:`keyed`).
        ValueError: image or mask not ``(1, H, W)`` on one grid.
    """

    def __init__(self, settings: Mapping[str, Any], keys: KeysCollection = "image", mask_key: str = "mask",
                 output_keys: KeysCollection = "radiomics", device: str | torch.device = "cpu",
                 cache_file: str | Path | None = None, consumer: str = "lesion radiomics",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.settings = dict(settings)
        self.shash = _hash(self.settings)
        self.mask_key = mask_key
        self.output_keys = ensure_tuple_rep(output_keys, len(self.keys))
        self.device = device
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self.consumer = consumer
        self._load()

    @property
    def _memory(self) -> dict[str, np.ndarray]:
        # Looked up on every use, not held: clear_cache() must reach transforms already built.
        return _MEMORY.setdefault(self.shash, {})

    @property
    def names(self) -> list[str]:
        """The feature names, once a vector of these settings has been computed or loaded."""
        return list(_NAMES.get(self.shash, []))

    def row_key(self, rec: Mapping[Hashable, Any], key: Hashable = "image") -> str:
        """Cache key of ``rec``'s lesion: its image and masks (paths with mtimes, or array bytes),
        frame and the settings."""
        img = rec[key]
        if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__"):
            src: Any = [str(img), _mtime(img)]
        else:  # in-memory array (inference API): key by content
            src = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()
        masks = rec.get(self.mask_key)
        if isinstance(masks, (list, tuple)):
            msk: Any = [[str(m), _mtime(m)] for m in masks]
        elif masks is None or isinstance(masks, str):
            msk = [[masks, _mtime(masks)]] if masks else []
        else:
            msk = hashlib.sha256(np.ascontiguousarray(masks).tobytes()).hexdigest()
        # A multi-frame row (data.reader_options.dicom.frame: all) is one sample per frame.
        return _hash([src, msk, self.shash, rec.get("frame")])

    def keyed(self, records: Sequence[Mapping[Hashable, Any]]) -> list[dict[Hashable, Any]]:
        """Copies of datalist ``records`` carrying their cache keys, checked for a mask before any
        image is read (a Dataset's item hash then also changes with the settings)."""
        out = []
        for rec in records:
            m = rec.get(self.mask_key)
            if m is None or (isinstance(m, (list, tuple, str)) and not m):
                raise RadiomicsInputError(f"{_row_name(rec, self.keys[0])}: no lesion mask; {self.consumer} uses lesion "
                                          "radiomics and needs a mask for every row")
            out.append({**rec, **{f"{o}_key": self.row_key(rec, k) for k, o in zip(self.keys, self.output_keys)}})
        return out

    def cached(self, item: Mapping[Hashable, Any], output_key: str = "radiomics") -> np.ndarray | None:
        """The float64 vector of a :meth:`keyed` item if it is cached, else None."""
        return self._memory.get(item[f"{output_key}_key"])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            rk = d.pop(f"{out}_key", None)
            vec = self._memory.get(rk) if rk is not None else None
            if vec is None:
                vec = self._extract(d, key)
                if rk is not None:
                    self._memory[rk] = vec
            d[out] = vec.astype(np.float32)
        return d

    def _extract(self, d: Mapping[Hashable, Any], key: Hashable) -> np.ndarray:
        img, mask = np.asarray(d[key]), np.asarray(d[self.mask_key])
        if img.ndim != 3 or img.shape[0] != 1 or mask.shape != img.shape:
            raise ValueError(f"{_row_name(d, key)}: radiomics needs channel-first (1, H, W) image and mask, "
                             f"got {img.shape} and {mask.shape}")
        mask = mask[0] > 0.5
        if not mask.any():
            raise RadiomicsInputError(f"{_row_name(d, key)}: the lesion mask is empty; {self.consumer} needs a lesion")
        crop, msk = lesion_crop(img[0], mask)
        s = self.settings
        table = extract_features([crop], [msk], n_bins=s["n_bins"], aggregation=s["aggregation"],
                                 families=s["families"], device=self.device, ids=[_row_name(d, key)])
        if _NAMES.setdefault(self.shash, list(table.names)) != list(table.names):
            raise RuntimeError("radiomics feature names changed within one run; clear the cache")
        return table.values[0]

    def _load(self) -> None:
        if self.cache_file is None or not self.cache_file.is_file():
            return
        try:
            with np.load(self.cache_file, allow_pickle=False) as z:
                names, keys, values = [str(n) for n in z["names"]], [str(k) for k in z["keys"]], z["values"]
        except (OSError, ValueError, KeyError):
            return  # a damaged cache is recomputed, never trusted
        if _NAMES.setdefault(self.shash, names) == names:
            for k, v in zip(keys, values):
                self._memory.setdefault(k, v)

    def save(self) -> None:
        """Write every vector of these settings computed or loaded in this process to ``cache_file``."""
        if self.cache_file is None or not self._memory:
            return
        from breastai.core.files import atomic_write

        keys = list(self._memory)
        atomic_write(self.cache_file, lambda tmp: np.savez(tmp, names=np.array(self.names), keys=np.array(keys),
                                                           values=np.stack([self._memory[k] for k in keys])),
                     suffix=".npz")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _mtime(p: Any) -> int:
    try:
        return os.stat(p).st_mtime_ns
    except OSError:
        return -1  # unreadable: loading reports it, naming the row


def _row_name(d: Mapping[Hashable, Any], key: Hashable) -> str:
    src = d[key]
    path_like = isinstance(src, (str, bytes)) or hasattr(src, "__fspath__")
    where = str(src) if path_like else str(d.get("source", "<array>"))
    return f"case {d.get('case_id', '?')!r} ({where})"


def _device(cfg: dict[str, Any]) -> str:
    dev = str(cfg.get("device", "cpu"))
    if dev == "cpu" or not torch.cuda.is_available():  # a GPU-trained checkpoint still measures on a CPU machine
        return "cpu"
    # resolve_device picks the local rank's GPU under torchrun (every rank used GPU 0 before)
    return str(resolve_device("auto" if dev in ("auto", "cuda") else dev))
