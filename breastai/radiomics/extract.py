"""Top-level radiomics API: many lesions of different sizes in, one feature table out.

Each lesion is cropped to its mask's bounding box plus a margin, lesions of similar size are
padded into batches, and every feature family runs on the whole batch at once (CPU or CUDA).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from breastai.radiomics import texture
from breastai.radiomics.discretise import discretise
from breastai.radiomics.intensity import (
    histogram_features,
    ivh_features,
    local_intensity_features,
    statistics_features,
)
from breastai.radiomics.morphology import autocorrelation, morphology_features

__all__ = [
    "FeatureTable",
    "RadiomicsInputError",
    "BASE_FAMILIES",
    "OPTIONAL_FAMILIES",
    "available_families",
    "default_families",
    "texture_families",
    "extract_features",
    "features_for_datalist",
]

BASE_FAMILIES = ("morphology", "statistics", "histogram", "ivh", "local", "autocorrelation")
# Exact Moran's I / Geary's C cost FFTs over the doubled crop: opt-in.
OPTIONAL_FAMILIES = ("autocorrelation",)
_LOCAL_RADIUS_MM = 10.0 * (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)


class RadiomicsInputError(ValueError):
    """A lesion cannot be measured; the message names the lesion and the problem."""


@dataclass
class FeatureTable:
    """Feature values of N lesions.

    Attributes:
        names: F feature names (``<ibsi_tag>`` or ``<tag>_<aggregation>`` for texture).
        values: float64 array ``(N, F)``.
        ids: N lesion identifiers.
    """

    names: list[str]
    values: np.ndarray
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def column(self, name: str) -> np.ndarray:
        """Values of one feature over all lesions."""
        try:
            return self.values[:, self.names.index(name)]
        except ValueError:
            raise KeyError(f"no feature {name!r} in this table") from None

    def row(self, i: int) -> dict[str, float]:
        """Features of lesion ``i`` as a dict."""
        return dict(zip(self.names, (float(v) for v in self.values[i])))

    def to_csv_text(self, id_column: str = "case_id") -> str:
        """The table as CSV text (ids first; floats with 17 significant digits)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([id_column, *self.names])
        ids = self.ids or [str(i) for i in range(len(self))]
        for cid, vals in zip(ids, self.values):
            w.writerow([cid, *(repr(float(v)) for v in vals)])
        return buf.getvalue()


def texture_families() -> dict[str, tuple[Callable[..., dict[str, torch.Tensor]], dict[str, str], tuple[str, ...]]]:
    """The texture registry ``name -> (fn, FEATURES, aggregations)``."""
    return dict(texture.FAMILIES)


def available_families() -> list[str]:
    """Every family this installation can compute, in output order."""
    return [*BASE_FAMILIES, *texture_families()]


def default_families() -> list[str]:
    """The families computed when none are named: all available except :data:`OPTIONAL_FAMILIES`."""
    return [f for f in available_families() if f not in OPTIONAL_FAMILIES]


def _check_aggregations(requested: Sequence[str], families: Sequence[str], tex: dict[str, Any]) -> None:
    """Refuse an aggregation no texture family offers, or a texture family that would give no feature."""
    offered = sorted({a for _, _, aggs in tex.values() for a in aggs})
    unknown = [a for a in requested if not _texture_aggregations([a], offered)]
    if unknown or not requested:
        raise ValueError(f"unknown texture aggregation(s) {unknown or list(requested)}; offered: {', '.join(offered)}")
    for f in families:
        if not _texture_aggregations(requested, tex[f][2]):
            raise ValueError(f"feature family {f} offers none of the aggregations {list(requested)}; "
                             f"it offers {', '.join(tex[f][2])}")


def _texture_aggregations(requested: Sequence[str], offered: Sequence[str]) -> list[str]:
    """Map user aggregations ("2d", "2d_avg", ...) onto those a family offers."""
    out: list[str] = []
    for a in requested:
        for fa in offered:
            if (fa == a or fa.startswith(a + "_") or a.startswith(fa + "_")) and fa not in out:
                out.append(fa)
    return out


@dataclass
class _Lesion:
    index: int
    image: np.ndarray  # cropped, 3D (D, H, W)
    mask: np.ndarray
    valid: np.ndarray
    spacing: tuple[float, float, float]
    key: int = 0


def _lesion_name(i: int, ids: Sequence[str] | None) -> str:
    return f"lesion {i}" + (f" ({ids[i]})" if ids is not None else "")


def _prepare(i: int, image: Any, mask: Any, spacing: tuple[float, float, float], margin: tuple[int, int, int],
             ids: Sequence[str] | None) -> _Lesion:
    name = _lesion_name(i, ids)
    img = np.asarray(image)
    msk = np.asarray(mask)
    if img.ndim not in (2, 3):
        raise RadiomicsInputError(f"{name}: image must be 2D or 3D, got shape {img.shape}")
    if img.shape != msk.shape:
        raise RadiomicsInputError(f"{name}: mask shape {msk.shape} does not match image shape {img.shape}")
    msk = msk.astype(bool)
    n = int(msk.sum())
    if n == 0:
        raise RadiomicsInputError(f"{name}: mask is empty")
    if n == 1:
        raise RadiomicsInputError(f"{name}: mask has a single pixel; shape features need at least 2")
    if img.ndim == 2:
        img, msk = img[None], msk[None]
    img = img.astype(np.float64)
    if not np.isfinite(img[msk]).all():
        raise RadiomicsInputError(f"{name}: image has non-finite values inside the mask")
    lo = [int(np.flatnonzero(msk.any(axis=tuple(a for a in range(3) if a != d))).min()) for d in range(3)]
    hi = [int(np.flatnonzero(msk.any(axis=tuple(a for a in range(3) if a != d))).max()) for d in range(3)]
    sl = tuple(slice(max(lo[d] - margin[d], 0), min(hi[d] + margin[d] + 1, img.shape[d])) for d in range(3))
    crop_m = msk[sl]
    return _Lesion(i, np.ascontiguousarray(img[sl]), crop_m, np.ones_like(crop_m), spacing)


def _normalise_spacing(spacing: Any, n: int, ndim: int) -> list[tuple[float, float, float]]:
    def one(s: Any) -> tuple[float, float, float]:
        s = tuple(float(v) for v in s)
        if len(s) == 2:
            s = (1.0, *s)
        if len(s) != 3 or min(s) <= 0:
            raise RadiomicsInputError(f"spacing must be 2 or 3 positive numbers, got {s}")
        return s  # type: ignore[return-value]

    if spacing is None:
        return [(1.0, 1.0, 1.0)] * n
    arr = list(spacing)
    if arr and np.isscalar(arr[0]):
        return [one(arr)] * n
    if len(arr) != n:
        raise RadiomicsInputError(f"got {len(arr)} spacings for {n} lesions")
    return [one(s) for s in arr]


def _stack(lesions: list[_Lesion], device: torch.device) -> tuple[torch.Tensor, ...]:
    D = max(l.image.shape[0] for l in lesions)
    H = max(l.image.shape[1] for l in lesions)
    W = max(l.image.shape[2] for l in lesions)
    B = len(lesions)
    img = np.zeros((B, D, H, W))
    msk = np.zeros((B, D, H, W), dtype=bool)
    val = np.zeros((B, D, H, W), dtype=bool)
    for b, l in enumerate(lesions):
        d, h, w = l.image.shape
        img[b, :d, :h, :w] = l.image
        msk[b, :d, :h, :w] = l.mask
        val[b, :d, :h, :w] = l.valid
    sp = torch.tensor([l.spacing for l in lesions], dtype=torch.float64, device=device)
    return (torch.from_numpy(img).to(device), torch.from_numpy(msk).to(device),
            torch.from_numpy(val).to(device), sp)


def _batch_features(lesions: list[_Lesion], families: list[str], tex: dict, aggs: Sequence[str],
                    disc_kw: dict[str, Any], reseg: tuple[float | None, float | None] | None,
                    device: torch.device) -> dict[str, torch.Tensor]:
    img, morph_mask, valid, sp = _stack(lesions, device)
    int_mask = morph_mask
    if reseg is not None:
        lo, hi = reseg
        int_mask = morph_mask.clone()
        if lo is not None:
            int_mask &= img >= lo
        if hi is not None:
            int_mask &= img <= hi
        empty = ~int_mask.flatten(1).any(1)
        if bool(empty.any()):
            bad = [_lesion_name(lesions[int(b)].index, None) for b in torch.nonzero(empty).flatten()]
            raise RadiomicsInputError(f"{', '.join(bad)}: no voxel left inside the re-segmentation range {reseg}")
    out: dict[str, torch.Tensor] = {}
    if "morphology" in families:
        out.update(morphology_features(img, morph_mask, sp, int_mask=int_mask, autocorr=False))
    if "autocorrelation" in families:
        moran, geary = autocorrelation(img, int_mask, sp)
        pre = "morph2d" if img.shape[1] == 1 else "morph"
        out.update({f"{pre}_moran_i": moran, f"{pre}_geary_c": geary})
    if "statistics" in families:
        out.update(statistics_features(img, int_mask))
    disc = None
    if {"histogram", "ivh"} & set(families) or any(f in tex for f in families):
        disc = discretise(img, int_mask, **disc_kw)
    if "histogram" in families and disc is not None:
        out.update(histogram_features(disc.levels, int_mask, disc.hist_lo, disc.hist_hi))
    if "ivh" in families and disc is not None:
        out.update(ivh_features(disc.ivh_values, int_mask, disc.ivh_lo, disc.ivh_hi, disc.ivh_step))
    if "local" in families:
        out.update(local_intensity_features(img, int_mask, valid, lesions[0].spacing))
    for fam in families:
        if fam not in tex or disc is None:
            continue
        fn, _, offered = tex[fam]
        for agg in _texture_aggregations(aggs, offered):
            res = fn(disc.levels, int_mask, disc.n_levels, aggregation=agg)
            out.update({f"{k}_{agg}": v for k, v in res.items()})
    return out


def _check_request(families: Sequence[str] | None, aggregation: str | Sequence[str]
                   ) -> tuple[list[str], list[str], dict[str, Any]]:
    """(families, aggregations, texture families) of a request, refused if any name is unknown."""
    tex = texture_families()
    fams = list(default_families() if families is None else families)
    unknown = [f for f in fams if f not in BASE_FAMILIES and f not in tex]
    if unknown:
        raise ValueError(f"unknown or unavailable feature families {unknown}; available: {available_families()}")
    aggs = [aggregation] if isinstance(aggregation, str) else list(aggregation)
    _check_aggregations(aggs, [f for f in fams if f in tex], tex)
    return fams, aggs, tex


def extract_features(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    spacing: Any = None,
    discretisation: str = "fbn",
    n_bins: int = 32,
    bin_width: float | None = None,
    resegment_range: tuple[float | None, float | None] | None = None,
    aggregation: str | Sequence[str] = "2d",
    families: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    ids: Sequence[str] | None = None,
    progress: Callable[[int], Any] | None = None,
    max_batch_voxels: int = 1 << 21,
) -> FeatureTable:
    """Compute IBSI features for many lesions, batched.

    Args:
        images: N 2D ``(H, W)`` or 3D ``(D, H, W)`` arrays (all of one dimensionality).
        masks: N arrays of the same shapes; non-zero is the ROI.
        spacing: voxel spacing in mm, ``(y, x)`` / ``(z, y, x)`` for all lesions or one per lesion;
            default 1 (pixel units).
        discretisation: ``"fbn"`` (fixed bin number), ``"fbs"`` (fixed bin size) or ``"none"``.
        n_bins: bins for FBN.
        bin_width: bin width for FBS (``discretisation="fbs"`` is implied when given).
        resegment_range: ``(lower, upper)`` IBSI range re-segmentation of the intensity mask
            (either bound may be None); ``lower`` is also the FBS lower bound.
        aggregation: texture aggregation(s), e.g. ``"2d"`` (all 2D ones), ``"2d_avg"``, ``"3d"``.
        families: subset of :func:`available_families`; default :func:`default_families` (all
            but the opt-in ``"autocorrelation"``: Moran's I and Geary's C).
        device: torch device (default CPU).
        batch_size: most lesions per batch.
        ids: lesion names used in errors and in the table.
        progress: called with the number of lesions finished after every batch.
        max_batch_voxels: cap on padded voxels per batch (a batch always holds one lesion).

    Returns:
        A :class:`FeatureTable` in input order.

    Raises:
        RadiomicsInputError: a lesion with an empty or one-pixel mask, mismatched shapes,
            non-finite intensities, or mixed 2D/3D input; the message names the lesion.
        ValueError: an unknown family or discretisation setting.
    """
    if len(images) != len(masks):
        raise RadiomicsInputError(f"got {len(images)} images but {len(masks)} masks")
    if ids is not None and len(ids) != len(images):
        raise RadiomicsInputError(f"got {len(ids)} ids for {len(images)} lesions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fams, aggs, tex = _check_request(families, aggregation)
    if bin_width is not None and discretisation == "fbn":
        discretisation = "fbs"
    disc_kw = {"method": discretisation, "n_bins": n_bins, "bin_width": bin_width,
               "min_bound": None if resegment_range is None else resegment_range[0]}
    dev = torch.device(device) if device is not None else torch.device("cpu")
    n = len(images)
    ndims = {np.ndim(im) for im in images}
    if len(ndims) > 1:
        raise RadiomicsInputError(f"lesions mix 2D and 3D images (dimensions {sorted(ndims)})")
    sps = _normalise_spacing(spacing, n, ndims.pop() if ndims else 2)
    lesions = []
    for i in range(n):
        margin = (1, 1, 1)
        if "local" in fams:  # the 1 cm^3 sphere reaches beyond the ROI
            margin = tuple(max(1, math.ceil(_LOCAL_RADIUS_MM / s)) for s in sps[i])  # type: ignore[assignment]
        lesions.append(_prepare(i, images[i], masks[i], sps[i], margin, ids))
    if discretisation in ("fbs", "none"):
        for l in lesions:  # texture Ng is per batch: batch lesions sharing their level count
            d = discretise(torch.from_numpy(l.image)[None], torch.from_numpy(l.mask)[None], **disc_kw)
            l.key = d.n_levels
    order = sorted(lesions, key=lambda l: (l.key, l.spacing, l.image.shape[0], l.image.shape[1] * l.image.shape[2]))
    rows: dict[int, dict[str, np.ndarray]] = {}
    names: list[str] | None = None
    start = 0
    done = 0
    while start < len(order):
        batch = [order[start]]
        dims = list(order[start].image.shape)
        while start + len(batch) < len(order) and len(batch) < batch_size:
            nxt = order[start + len(batch)]
            grown = [max(a, b) for a, b in zip(dims, nxt.image.shape)]
            # Same level count and spacing, and a padded batch that stays cache/memory friendly.
            if ((nxt.key, nxt.spacing) != (batch[0].key, batch[0].spacing)
                    or (len(batch) + 1) * grown[0] * grown[1] * grown[2] > max_batch_voxels):
                break
            batch.append(nxt)
            dims = grown
        start += len(batch)
        res = _batch_features(batch, fams, tex, aggs, disc_kw, resegment_range, dev)
        if names is None:
            names = list(res)
        cols = np.stack([res[k].detach().to("cpu", torch.float64).numpy() for k in names], 1)
        for b, l in enumerate(batch):
            rows[l.index] = cols[b]
        done += len(batch)
        if progress is not None:
            progress(len(batch))
    names = names or []
    values = np.stack([rows[i] for i in range(n)]) if n else np.zeros((0, len(names)))
    return FeatureTable(names, values, list(ids) if ids is not None else [str(i) for i in range(n)])


def features_for_datalist(
    datalist_path: str | Path,
    out_csv: str | Path,
    *,
    n_bins: int = 32,
    bin_width: float | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    families: Sequence[str] | None = None,
    aggregation: str | Sequence[str] = "2d",
    show_progress: bool = True,
    chunk_size: int = 256,
) -> tuple[FeatureTable, list[str]]:
    """One feature row per datalist lesion (``case_id`` + features), written atomically to CSV.

    Rows that cannot be measured (unreadable file, no mask, empty or one-pixel mask, mask size
    mismatch) are reported on stderr and in the returned error list, naming the row; the
    other rows go on.

    Returns:
        ``(table, errors)``.

    Raises:
        RadiomicsInputError: when no row at all is usable (nothing is written then).
    """
    from tqdm.auto import tqdm

    from breastai.core.files import atomic_write_text
    from breastai.data.datalist import read_datalist
    from breastai.data.readers.masks import load_mask
    from breastai.data.readers.registry import ImageReadError, check_finite, load_image

    datalist_path = Path(datalist_path)
    # Found now, not after the first chunk of images has been read.
    if Path(out_csv).is_dir():
        raise ValueError(f"{out_csv} is a folder; --out names the CSV file to write")
    _check_request(families, aggregation)
    records = read_datalist(datalist_path, check_files=False, require_label=False)
    errors: list[str] = []
    tables: list[FeatureTable] = []
    bar = tqdm(total=len(records), desc="radiomics", unit="lesion", disable=not show_progress)

    def fail(rec: dict[str, Any], problem: str) -> None:
        msg = f"{datalist_path}: case {rec['case_id']!r}: {problem}"
        errors.append(msg)
        print(f"skipped: {msg}", file=sys.stderr)
        bar.update(1)

    for c0 in range(0, len(records), chunk_size):
        imgs, msks, cids = [], [], []
        for rec in records[c0 : c0 + chunk_size]:
            if not rec["mask"]:
                fail(rec, "no mask given")
                continue
            try:
                img, meta = load_image(rec["image"])
                check_finite(img, str(rec["image"]))
                msk = load_mask(rec["mask"], img.shape, meta)
                _prepare(0, img, msk, (1.0, 1.0, 1.0), (1, 1, 1), None)
            except (ImageReadError, RadiomicsInputError, OSError) as exc:
                fail(rec, str(exc).replace("lesion 0: ", ""))
                continue
            imgs.append(img)
            msks.append(msk)
            cids.append(rec["case_id"])
        if imgs:
            tables.append(extract_features(imgs, msks, n_bins=n_bins, bin_width=bin_width, device=device,
                                           batch_size=batch_size, families=families, aggregation=aggregation,
                                           ids=cids, progress=bar.update))
    bar.close()
    if not tables:
        raise RadiomicsInputError(f"{datalist_path}: no usable lesion ({len(errors)} rows skipped)")
    table = FeatureTable(tables[0].names, np.concatenate([t.values for t in tables]),
                         [i for t in tables for i in t.ids])
    atomic_write_text(out_csv, table.to_csv_text())
    return table, errors
