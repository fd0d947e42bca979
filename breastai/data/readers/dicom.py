"""DICOM decoding: decode, Modality/VOI LUT, MONOCHROME1, colour, frames, breast geometry.

Grey images go through the DICOM greyscale pipeline as one lookup table built over every
possible stored value (BitsStored mask and sign, padding, Modality LUT/rescale, VOI LUT or
window, MONOCHROME1 inversion, scaling to [0, 1]); the table is then applied to the stored
pixels in a single gather, after cropping and mirroring, so a 26-megapixel mammogram costs one
pass and no float64 copy. Output convention: float32 in [0, 1], dense tissue bright,
background/padding 0; mammograms with the chest wall on the left, cropped to the breast.

Nothing patient-identifying ever reaches ``meta``: UIDs appear only as short sha256 hashes.
Header-only questions (identity, modality, view, side) are :mod:`breastai.data.readers.dicom_header`.
Importing this module registers the ``"dicom"`` reader of :func:`breastai.data.readers.load_image`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut
from pydicom.uid import UID, ImplicitVRLittleEndian

from breastai.core.files import visible_files
from breastai.data.readers import mammo
from breastai.data.readers.dicom_header import (
    image_laterality,
    is_dicom,
    modality_and_intent,
    uid_hash,
    view_position,
)
from breastai.data.readers.dicom_lut import (
    colour_to_grey,
    floats,
    grey_transform,
    stored_domain,
)
from breastai.data.readers.dicom_pixels import (
    check_declared_pixels,
    check_pixel_data,
    decode,
    n_frames,
)
from breastai.data.readers.registry import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    register_reader,
)

__all__ = ["DicomImage", "DicomGroups", "read_dicom", "dicom_frame_count", "group_dicom_folder"]

log = logging.getLogger(__name__)

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")



@dataclass
class DicomImage:
    """A decoded, display-ready DICOM image.

    Attributes:
        pixels: float32 (H, W), or (F, H, W) for ``frame="all"``/``"stack"``, in [0, 1].
        meta: de-identified header facts and processing record.
        flipped_lr: the image was mirrored left-right (after cropping).
        crop_box: ``(r0, r1, c0, c1)``, half-open, in the original pixel grid; None if not cropped.
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    flipped_lr: bool = False
    crop_box: tuple[int, int, int, int] | None = None


class DicomGroups(dict):
    """``{(study_uid_hash, series_uid_hash): [paths]}`` plus ``notes`` on skipped files."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []


def _open(path: Path, header_only: bool = False) -> Dataset:
    import warnings

    try:
        # pydicom reads a file cut inside encapsulated pixel data as an EMPTY dataset and only warns.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=header_only)
        cut = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
        if cut or len(ds) == 0:
            why = cut[0].replace(f" in file {path}", "") if cut else "no elements"
            raise ImageReadError(f"{path}: truncated or corrupt DICOM file ({why})")
    except ImageReadError:
        raise
    except InvalidDicomError:
        try:  # no preamble: old or hand-written files
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
        except Exception as exc:
            raise ImageReadError(f"{path}: not a readable DICOM file ({exc})") from exc
        if "SOPClassUID" not in ds and not any(t in ds for t in _PIXEL_TAGS):
            raise ImageReadError(f"{path}: not a DICOM file (no preamble and no DICOM image elements)")
    except Exception as exc:  # pydicom raises many types for truncated files
        raise ImageReadError(f"{path}: cannot parse DICOM ({type(exc).__name__}: {exc})") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def dicom_frame_count(path: str | Path) -> int:
    """Number of frames of a DICOM image (1 for a single-frame image)."""
    return n_frames(_open(Path(path), header_only=True))


def _frame_index(frame: str | int, n: int, path: Path) -> int | None:
    """Frame to decode (None = all frames)."""
    if frame in ("all", "stack"):
        return None
    if frame == "middle":
        return n // 2
    if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool):
        idx = int(frame) + n if frame < 0 else int(frame)
        if 0 <= idx < n:
            return idx
        raise ImageReadError(f"{path}: frame {frame} requested but the image has {n} frame(s)")
    raise ImageReadError(f"{path}: frame must be 'middle', 'all', 'stack' or an int, got {frame!r}")


def _flatten_functional_groups(ds: Dataset, index: int) -> dict[str, Any]:
    """Copy per-frame facts of enhanced multi-frame objects (tomosynthesis) to the top level.

    pydicom's LUT functions read top-level Rescale/Window elements only; enhanced objects keep
    them in the shared or per-frame functional groups. Returns extra facts (FrameLaterality).
    """
    found: dict[str, Any] = {}
    groups = []
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    pf = ds.get("PerFrameFunctionalGroupsSequence")
    if pf and index < len(pf):
        groups.append(pf[index])  # per-frame values override shared ones
    wanted = {
        "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
        "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "WindowCenterWidthExplanation"),
        "PixelMeasuresSequence": ("PixelSpacing",),
        "FrameAnatomySequence": ("FrameLaterality",),
    }
    for g in groups:
        for seq, keys in wanted.items():
            if g.get(seq):
                for k in keys:
                    if k in g[seq][0]:
                        found[k] = g[seq][0][k].value
    for k, v in found.items():
        if k != "FrameLaterality" and k not in ds:
            setattr(ds, k, v)
    return found


def _header_meta(ds: Dataset, path: Path, modality: str | None, intent: str | None) -> dict[str, Any]:
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    spacing, src = floats(ds.get("PixelSpacing")), "PixelSpacing"
    if not spacing:
        spacing, src = floats(ds.get("ImagerPixelSpacing")), "ImagerPixelSpacing"
    return {
        "format": "dicom",
        "file": path.name,
        "modality": modality,
        "presentation_intent": intent,
        "manufacturer": str(ds.get("Manufacturer", "") or "") or None,
        "model": str(ds.get("ManufacturerModelName", "") or "") or None,
        "photometric": str(ds.get("PhotometricInterpretation", "") or "") or None,
        "transfer_syntax": ts.name,
        "transfer_syntax_uid": str(ts),
        "rows": int(ds.get("Rows", 0) or 0),
        "cols": int(ds.get("Columns", 0) or 0),
        "bits_allocated": int(ds.get("BitsAllocated", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "samples_per_pixel": int(ds.get("SamplesPerPixel", 1) or 1),
        "n_frames": n_frames(ds),
        "image_type": [str(v) for v in (ds.get("ImageType") or [])],
        "pixel_spacing": spacing[:2] or None,
        "pixel_spacing_source": src if spacing else None,
        "sop_uid_hash": uid_hash(ds.get("SOPInstanceUID")),
        "study_uid_hash": uid_hash(ds.get("StudyInstanceUID")),
        "series_uid_hash": uid_hash(ds.get("SeriesInstanceUID")),
    }


def _grey_pipeline(ds: Dataset, raw: np.ndarray, path: Path, opts: dict[str, Any], mammo_geom: bool,
                   laterality: str | None) -> tuple[np.ndarray, dict[str, Any], bool, tuple[int, int, int, int] | None]:
    stack = raw if raw.ndim == 3 else raw[None]
    _, h, w = stack.shape
    step = max(1, int(np.ceil(max(h, w) / 512)))  # geometry and statistics on <= 512 px
    small_raw = stack[:, ::step, ::step]
    dom = stored_domain(stack.dtype, int(ds.get("BitsStored", 0) or 0), int(ds.get("PixelRepresentation", 0) or 0) == 1)
    if dom is not None:
        idx_dtype, stored = dom
        weights = np.bincount(small_raw.view(idx_dtype).ravel(), minlength=stored.size)
        lut, info = grey_transform(ds, stored, weights, path, opts)
    else:  # 32-bit or float pixels: transform directly (rare; costs a float copy)
        flat = stack.astype(np.float64)
        full, info = grey_transform(ds, flat, np.ones(flat.shape), path, opts)
    flip, box = False, None
    if mammo_geom and (opts["canonical"] or opts["crop_breast"]):
        # Geometry from min-max scaled values, not the VOI output: a hard window or a sigmoid
        # pushes the fatty skin line to 0 and would make the crop depend on window_index.
        geo_opts = {**opts, "apply_voi": False}
        if dom is not None:
            geo, _ = grey_transform(ds, stored, weights, path, geo_opts)
            small = geo[small_raw.view(idx_dtype)].max(axis=0)
        else:
            small_flat = flat[:, ::step, ::step]
            small = grey_transform(ds, small_flat, np.ones(small_flat.shape), path, geo_opts)[0].max(axis=0)
        mask = mammo.breast_mask(small)
        if opts["crop_breast"]:
            box = mammo.breast_box(mask, (step, step), (h, w))
            info["crop_warning"] = None if box is not None else "no breast region found; not cropped"
        if opts["canonical"]:
            flip, src, warn = mammo.decide_flip(ds.get("PatientOrientation"), laterality, mask)
            info.update(orientation_source=src, orientation_warning=warn)
            if src == "content" and laterality is None:
                info["laterality_from_content"] = "R" if flip else "L"
    r0, r1, c0, c1 = box if box is not None else (0, h, 0, w)
    sub = stack[:, r0:r1, c0:c1]
    if flip:
        sub = sub[:, :, ::-1]
    out = lut[sub.view(idx_dtype)] if dom is not None else np.ascontiguousarray(full[:, r0:r1, c0:c1][:, :, ::-1] if flip else full[:, r0:r1, c0:c1])
    return (out if raw.ndim == 3 else out[0]), info, flip, box


def read_dicom(
    path: str | Path,
    *,
    window_index: int = 0,
    apply_voi: bool = True,
    canonical: bool = True,
    crop_breast: bool = True,
    frame: str | int = "middle",
    allow_for_processing: bool = False,
    voi_source: str = "auto",
    colour_overlay: str = "inpaint",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DicomImage:
    """Read a DICOM image as display-ready float32 in [0, 1], dense tissue bright.

    Args:
        path: the DICOM file.
        window_index: which VOI LUT item / window centre-width pair (0 = the default view).
        apply_voi: apply the VOI LUT or window; if False (or none in the header), min-max scale.
        canonical: mammograms only: mirror so the chest wall is on the left.
        crop_breast: mammograms only: crop to the breast bounding box (labels/background out).
        frame: ``"middle"`` (default), a frame index, ``"all"`` ((F, H, W), frames meant as
            separate samples) or ``"stack"`` ((F, H, W), one volumetric sample). All frames
            share one LUT (the middle frame's per-frame VOI for enhanced objects) and one
            geometry (crop box and flip from the maximum projection).
        allow_for_processing: read "For Processing" raw detector images with a log/percentile
            window instead of refusing them.
        voi_source: ``"auto"`` (VOI LUT sequence if present, else window), ``"lut"`` or ``"window"``.
        colour_overlay: ``"inpaint"`` or ``"luminance"``, see :func:`breastai.data.readers.dicom_lut.colour_to_grey`.
        max_pixels: the most pixels Rows x Columns x the frames to decode may come to.

    Raises:
        ImageReadError: not DICOM, no pixel data, pixel data the header's size does not describe,
            more pixels than ``max_pixels``, undecodable transfer syntax, For Processing refused,
            bad ``frame``/``window_index``.
    """
    path = Path(path)
    # The size is checked on a header read that stops before the pixel data: a file that declares
    # a huge image is refused without reading, let alone decoding, what follows.
    header = _open(path, header_only=True)
    n = n_frames(header)
    index = _frame_index(frame, n, path)
    check_declared_pixels(header, path, n if index is None else 1, max_pixels)
    ds = _open(path)
    if not any(t in ds for t in _PIXEL_TAGS):
        raise ImageReadError(f"{path}: DICOM object has no pixel data (no PixelData element; SOP class "
                             f"{UID(str(ds.get('SOPClassUID', ''))).name or 'unknown'})")
    check_pixel_data(ds, path, index)
    extra = _flatten_functional_groups(ds, n // 2 if index is None else index)
    modality, intent = modality_and_intent(ds)
    for_processing = intent == "FOR PROCESSING"
    if for_processing and not allow_for_processing:
        raise ImageReadError(f"{path}: 'FOR PROCESSING' (raw detector) image refused; its pixels are not meant for "
                             "display or for models trained on 'FOR PRESENTATION' images (pass allow_for_processing=True)")
    meta = _header_meta(ds, path, modality, intent)
    laterality, lat_src = image_laterality(ds, extra)
    meta.update(laterality=laterality, laterality_source=lat_src, view=view_position(ds),
                frame_policy=frame if isinstance(frame, str) else "index", frames=[index] if index is not None else list(range(n)))
    raw = decode(ds, path, index)
    photometric = (meta["photometric"] or "").upper()
    opts = dict(window_index=int(window_index), apply_voi=apply_voi, canonical=canonical, crop_breast=crop_breast,
                for_processing=for_processing, voi_source=voi_source)
    flip, box = False, None
    bits = 8 if raw.dtype == np.uint8 else meta["bits_stored"] or 16
    if photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
        meta["samples_per_pixel"] = 3
        bits = 8 * raw.dtype.itemsize  # palette entries use their full 8- or 16-bit range
    if meta["samples_per_pixel"] == 3:
        pixels, info = colour_to_grey(raw, bits, colour_overlay)
    else:
        if raw.ndim == 3 and index is not None:
            raw = raw[0]
        is_mammo = modality == "MG" or (modality == "DX" and str(ds.get("BodyPartExamined", "")).upper() == "BREAST")
        pixels, info, flip, box = _grey_pipeline(ds, raw, path, opts, is_mammo, laterality)
        if info.get("laterality_from_content") and laterality is None:
            meta.update(laterality=info["laterality_from_content"], laterality_source="content")
    info.pop("laterality_from_content", None)
    meta.update(info)
    meta.update(flipped_lr=bool(flip), crop_box=list(box) if box else None, output_shape=list(pixels.shape))
    return DicomImage(pixels=pixels, meta=meta, flipped_lr=bool(flip), crop_box=box)


def group_dicom_folder(folder: str | Path, recursive: bool = True) -> DicomGroups:
    """Group the DICOM files of a folder by (study, series), keys hashed.

    Files are sorted by InstanceNumber then name. Non-DICOM and unreadable files are skipped
    and listed in ``result.notes``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    groups = DicomGroups()
    order: dict[tuple[str | None, str | None], list[tuple[int, str, Path]]] = {}
    # Hidden folders (.ipynb_checkpoints) hold copies: listed, one image would count twice.
    for p in visible_files(folder) if recursive else sorted(q for q in folder.iterdir() if not q.name.startswith(".")):
        if not p.is_file():
            continue
        if p.name.upper() == "DICOMDIR" or not is_dicom(p):
            groups.notes.append(f"{p}: skipped, not a DICOM image")
            continue
        try:
            ds = _open(p, header_only=True)
        except ImageReadError as exc:
            groups.notes.append(f"{p}: skipped, {exc}")
            continue
        key = (uid_hash(ds.get("StudyInstanceUID")), uid_hash(ds.get("SeriesInstanceUID")))
        try:
            inst = int(ds.get("InstanceNumber") or 0)
        except (TypeError, ValueError):
            inst = 0
        order.setdefault(key, []).append((inst, p.name, p))
    for key, items in order.items():
        groups[key] = [p for _, _, p in sorted(items)]
    return groups


def _read_for_io(path: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    frame = options.pop("frame", "middle")
    if frame in ("all", "stack"):
        raise ImageReadError(f"{path}: load_image returns one 2D image; use frame='middle' or an index, or read_dicom for {frame!r}")
    img = read_dicom(path, frame=frame, **options)
    return img.pixels, dict(img.meta)


register_reader("dicom", is_dicom, _read_for_io)
