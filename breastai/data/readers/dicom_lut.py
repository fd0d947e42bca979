"""Pixel-value side of DICOM ingestion: the greyscale LUT chain and colour to grey.

:func:`grey_transform` maps stored values to display values in [0, 1] following the DICOM
greyscale pipeline (PS3.3 C.11): padding detected on stored values, Modality LUT or rescale,
VOI LUT sequence or window (LINEAR / LINEAR_EXACT / SIGMOID), MONOCHROME1 inversion. It is
meant to be evaluated once on every possible stored value (:func:`stored_domain`) to build a
lookup table, not on the full image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi
from scipy import ndimage

from breastai.data.readers.registry import ImageReadError

__all__ = ["grey_transform", "stored_domain", "colour_to_grey", "floats"]

# Chroma (max - min channel, on a 0..1 scale) above which a colour pixel is taken to be a
# burnt-in overlay (calipers, text, Doppler) rather than a grey tissue pixel with JPEG noise.
_CHROMA_OVERLAY = 0.2


def floats(v: Any) -> list[float]:
    """A DICOM single or multi-valued number as a list of floats ([] if absent or invalid)."""
    if v is None:
        return []
    items = [v] if isinstance(v, (str, bytes, int, float)) else list(v)
    try:
        return [float(x) for x in items]
    except (TypeError, ValueError):
        return []


def _window(x: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2/3 windowing, normalised to [0, 1] (pydicom's, divided by its range)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - centre) / width, -80, 80)))
    if function == "LINEAR_EXACT":
        return np.clip((x - centre) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR with width 1 is a threshold at centre - 0.5
        return (x > centre - 0.5).astype(np.float64)
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi(ds: Dataset, mod: np.ndarray, path: Path, index: int, source: str) -> tuple[np.ndarray | None, dict[str, Any]]:
    """VOI LUT sequence or window on modality values; None when the header has neither."""
    seq = ds.get("VOILUTSequence") or []
    has_lut = bool(seq) and all("LUTDescriptor" in it and "LUTData" in it for it in seq)
    centres, widths = floats(ds.get("WindowCenter")), floats(ds.get("WindowWidth"))
    has_win = bool(centres) and len(centres) == len(widths)
    use = {"auto": "lut" if has_lut else "window" if has_win else None, "lut": "lut" if has_lut else None,
           "window": "window" if has_win else None}.get(source)
    if source not in ("auto", "lut", "window"):
        raise ImageReadError(f"{path}: voi_source must be 'auto', 'lut' or 'window', got {source!r}")
    if use == "lut":
        if index >= len(seq):
            raise ImageReadError(f"{path}: window_index {index} but the VOI LUT sequence has {len(seq)} item(s)")
        item = seq[index]
        y = apply_voi(np.rint(mod).astype(np.int64), ds, index).astype(np.float32)
        top = float(2 ** int(item.LUTDescriptor[2]) - 1)
        data_max = float(y.max())
        if data_max > top or data_max < top / 16:  # descriptor bit depth wrong (seen in the wild)
            top = float(2 ** int(np.ceil(np.log2(data_max + 1))) - 1) if data_max > 0 else 1.0
        return y / top, {"voi": "lut", "voi_index": index, "voi_explanation": str(item.get("LUTExplanation", "") or "") or None}
    if use == "window":
        if index >= len(centres):
            raise ImageReadError(f"{path}: window_index {index} but the header has {len(centres)} window(s)")
        c, w = centres[index], widths[index]
        fn = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if w <= 0 or (fn == "LINEAR" and w < 1):
            return None, {"voi": "none", "voi_warning": f"invalid window width {w}; min-max scaling used"}
        expl = _window_explanation(ds, index)
        return _window(mod, c, w, fn), {"voi": "window", "voi_index": index, "voi_function": fn,
                                        "window": [c, w], "voi_explanation": expl}
    return None, {"voi": "none"}


def _window_explanation(ds: Dataset, index: int) -> str | None:
    e = ds.get("WindowCenterWidthExplanation")
    if e is None:
        return None
    items = list(e) if not isinstance(e, str) else [e]
    return str(items[index]) if index < len(items) else None


def _percentile_weighted(values: np.ndarray, weights: np.ndarray, qs: list[float]) -> list[float]:
    order = np.argsort(values, kind="stable")
    cw = np.cumsum(weights[order])
    return [float(values[order][min(len(order) - 1, int(np.searchsorted(cw, q / 100 * cw[-1])))]) for q in qs]


def grey_transform(ds: Dataset, stored: np.ndarray, weights: np.ndarray, path: Path, opts: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Map stored values to display values in [0, 1] (float32); see the module docstring.

    ``weights`` counts how often each entry of ``stored`` occurs in (a sample of) the image;
    it is used only when the header gives no VOI (min-max) and for For Processing images.
    """
    info: dict[str, Any] = {}
    pad = np.zeros(stored.shape, dtype=bool)
    pv = ds.get("PixelPaddingValue")
    if pv is not None and not isinstance(pv, (list, tuple, bytes)):
        lim = ds.get("PixelPaddingRangeLimit")
        lo, hi = (min(pv, lim), max(pv, lim)) if isinstance(lim, (int, float)) else (pv, pv)
        pad = (stored >= lo) & (stored <= hi)  # on stored values, before any LUT (PS3.3 C.7.5.1.1.2)
        info["padding"] = [int(lo), int(hi)]
    mod = apply_modality_lut(stored, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    present = (weights > 0) & ~pad
    if opts["for_processing"]:
        # Raw detector data has no usable VOI: log (if linear in intensity) then robust percentiles.
        x = mod.astype(np.float64)
        if str(ds.get("PixelIntensityRelationship", "")).upper() == "LIN":
            x = np.log1p(np.maximum(x - x[present].min() if present.any() else x, 0))
        lo, hi = _percentile_weighted(x[present], weights[present], [0.5, 99.5]) if present.any() else (0.0, 1.0)
        out = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
        sign = ds.get("PixelIntensityRelationshipSign")
        invert = (int(sign) == 1) if sign in (1, -1) else photometric == "MONOCHROME1"
        info.update(voi="for-processing-percentiles")
    else:
        out, vinfo = _voi(ds, mod, path, opts["window_index"], opts["voi_source"]) if opts["apply_voi"] else (None, {"voi": "none"})
        info.update(vinfo)
        bits = int(ds.get("BitsStored", 0) or 0)
        plain = "ModalityLUTSequence" not in ds and float(ds.get("RescaleSlope", 1) or 1) == 1 \
            and float(ds.get("RescaleIntercept", 0) or 0) == 0 and int(ds.get("PixelRepresentation", 0) or 0) == 0
        if out is None and 0 < bits <= 8 and plain:
            # 8-bit grey (ultrasound) is display-ready as is: keep its contrast, like a PNG / 255
            out = np.clip(mod / (2**bits - 1), 0, 1)
            info["voi"] = "bit-depth"
        if out is None:  # min-max of the values present in the image, padding excluded
            vals = mod[present] if present.any() else mod
            lo, hi = float(vals.min()), float(vals.max())
            out = np.clip((mod - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros(mod.shape)
        shape = str(ds.get("PresentationLUTShape", "") or "").upper()
        # In DX/MG objects INVERSE accompanies MONOCHROME1 (one inversion, not two).
        invert = photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")
    out = out.astype(np.float32)
    if invert:
        out = 1.0 - out
    out[pad] = 0.0
    info["inverted"] = bool(invert)
    return out, info


def stored_domain(dtype: np.dtype, bits_stored: int, signed: bool) -> tuple[np.dtype, np.ndarray] | None:
    """Every possible stored value for 8/16-bit integer pixels, indexed by the raw bit pattern.

    Masking to BitsStored and sign-extending here means garbage in the unused high bits and
    either signed convention of the decoder give the right value at no per-pixel cost.
    """
    if dtype.kind not in "ui" or dtype.itemsize > 2:
        return None
    nbits = dtype.itemsize * 8
    bs = min(max(int(bits_stored or nbits), 1), nbits)
    v = np.arange(2**nbits, dtype=np.int64) & ((1 << bs) - 1)
    if signed:
        sb = 1 << (bs - 1)
        v = (v ^ sb) - sb
    return np.dtype(f"uint{nbits}"), v


def colour_to_grey(rgb: np.ndarray, bits: int, overlay: str) -> tuple[np.ndarray, dict[str, Any]]:
    """RGB (…, H, W, 3) to luminance in [0, 1], inpainting strongly coloured overlay pixels.

    Ultrasound tissue is grey; calipers, text and Doppler boxes are saturated colour. Plain
    luminance would leave them as bright/dark marks the model may latch onto, so pixels with
    chroma above ``_CHROMA_OVERLAY`` get the grey value of the nearest non-overlay pixel
    (``overlay="inpaint"``, default); ``overlay="luminance"`` keeps plain luminance. When half
    the image or more is coloured (colour Doppler filling the field, a photograph) there is no
    grey tissue to borrow from and plain luminance is kept; ``colour_overlay_fraction`` in the
    returned info tells how much was coloured.
    """
    if overlay not in ("inpaint", "luminance"):
        raise ValueError(f"colour_overlay must be 'inpaint' or 'luminance', got {overlay!r}")
    x = rgb.astype(np.float32) / float(2**bits - 1)
    luma = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    chroma = x.max(axis=-1) - x.min(axis=-1)
    over = chroma > _CHROMA_OVERLAY
    frac = float(over.mean())
    if overlay == "inpaint" and over.any() and frac < 0.5:
        frames = luma if luma.ndim == 3 else luma[None]
        masks = over if over.ndim == 3 else over[None]
        for f, m in zip(frames, masks):
            if m.any() and not m.all():
                idx = ndimage.distance_transform_edt(m, return_distances=False, return_indices=True)
                f[...] = f[tuple(idx)]
    return np.clip(luma, 0, 1).astype(np.float32), {"colour_overlay_fraction": round(frac, 4), "colour_overlay": overlay}
