"""What predict is given, made into items: files, folders, datalists and arrays, with masks found or given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from breastai.core.files import visible_files
from breastai.data.frames import expand_frames
from breastai.data.readers.masks import LesionBox
from breastai.data.readers.registry import IMAGE_SUFFIXES, image_stem, image_suffix
from breastai.data.spacing import PIXEL_SIZE_COLUMN

__all__ = ["PredictItem", "has_mask_input", "expand_inputs", "expand_frames_of_items", "RUN_MARKER"]

_MASK_NAME = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)


def has_mask_input(mask: Any) -> bool:
    """Whether ``mask`` (paths, an array or a box) is a mask at all; arrays have no truth value."""
    return mask is not None and not (isinstance(mask, (list, tuple)) and len(mask) == 0)


@dataclass
class PredictItem:
    """One input: a path or an array, its optional mask (paths or array) and its display id."""

    image: Any
    mask: Any = None
    case_id: str | None = None
    source: str = "<array>"
    notes: list[str] = field(default_factory=list)
    mask_given: bool = False  # passed by the caller (``masks=``/``--mask``), not found beside the image or in a datalist
    frame: int | None = None  # one frame of a multi-frame DICOM (the checkpoint's frame policy ``all``)
    frame_suffix: bool = False  # the record id gets ``_f<frame>`` (the file has several frames)
    grouping: dict[str, str | None] = field(default_factory=dict)  # exam, laterality, view from a datalist row
    pixel_size_mm: str | None = None  # a datalist's ``pixel_size_mm`` column (lesion sizes in mm where nothing else says)

    @property
    def has_mask_input(self) -> bool:
        """A mask (path list, array or box) comes with this input."""
        return has_mask_input(self.mask)


def _is_image_file(p: Path) -> bool:
    if image_suffix(p) in IMAGE_SUFFIXES:
        return True
    from breastai.data.readers.dicom_header import (
        is_dicom,  # DICOM files often carry no suffix
    )

    return is_dicom(p)


def _sibling_masks(p: Path) -> list[str]:
    """BUSI-style masks next to an image: ``<stem>_mask.png``, ``<stem>_mask_1.png``, ... (any image
    suffix, in any case: a JPEG's mask is usually a PNG)."""
    import glob

    out = []
    base = image_stem(p)
    for m in sorted(p.parent.glob(glob.escape(base) + "_mask*")):
        stem = image_stem(m)
        hit = _MASK_NAME.search(stem)
        if hit and stem[: hit.start()] == base and image_suffix(m) in IMAGE_SUFFIXES:
            out.append(str(m))
    return out


RUN_MARKER = ".breastai-run"  # in a folder of maps written by one predict run


def _predict_output_folders(root: Path) -> set[Path]:
    """Folders under ``root`` that hold predict output (maps of a run, marked by ``.breastai-run``)."""
    return {m.parent for m in root.rglob(RUN_MARKER)}


def expand_inputs(
    inputs: Any, masks: Sequence[Any] | None = None, find_masks: bool = False
) -> tuple[list[PredictItem], list[str]]:
    """Turn files, folders (recursive), datalists (CSV/JSON) and arrays into :class:`PredictItem`.

    Args:
        inputs: one input or a list; a path, a folder, a datalist or a numpy array.
        masks: one mask (path, list of paths, array or :class:`~breastai.data.readers.masks.LesionBox`)
            per resulting image, in order.
        find_masks: pair images found in folders or given as files with BUSI-style sibling
            ``<stem>_mask*.png`` files.

    Returns:
        The items and notes on skipped folder entries (non-image files, mask files).

    Raises:
        ValueError: the number of masks does not match the number of images.
    """
    from breastai.data.datalist import read_datalist
    from breastai.data.grouping import grouping_of

    if isinstance(inputs, (str, Path, np.ndarray, torch.Tensor)) or not isinstance(inputs, Iterable):
        inputs = [inputs]
    items: list[PredictItem] = []
    notes: list[str] = []
    for k, inp in enumerate(inputs):
        if isinstance(inp, (np.ndarray, torch.Tensor)):
            items.append(PredictItem(np.asarray(inp), case_id=f"array{k}", source="<array>"))
            continue
        p = Path(inp)
        if p.is_dir():
            outputs = _predict_output_folders(p)
            for f in visible_files(p):
                if outputs & set(f.parents):  # an earlier predict run's overlays, not inputs
                    continue
                if _MASK_NAME.search(image_stem(f)):
                    notes.append(f"{f}: skipped (a mask file)")
                elif not _is_image_file(f):
                    notes.append(f"{f}: skipped (not an image file)")
                else:
                    items.append(PredictItem(str(f), _sibling_masks(f) or None if find_masks else None, source=str(f)))
        elif p.suffix.lower() in (".csv", ".json") and p.is_file():
            for r in read_datalist(p, check_files=False, require_label=False):
                items.append(PredictItem(r["image"], r["mask"] or None, case_id=r["case_id"], source=str(r["image"]),
                                         grouping={k: v for k, v in grouping_of(r).items() if v},
                                         pixel_size_mm=r.get(PIXEL_SIZE_COLUMN) or None))
        else:  # a file (missing or unsupported ones become error records)
            items.append(PredictItem(str(p), (_sibling_masks(p) or None) if find_masks and p.is_file() else None, source=str(p)))
    if masks is not None:
        # One mask for one image may come bare (a path, an array, a box), like the image itself.
        masks = [masks] if isinstance(masks, (str, Path, np.ndarray, torch.Tensor, LesionBox)) else list(masks)
        if len(masks) != len(items):
            raise ValueError(f"{len(masks)} mask(s) given for {len(items)} image(s); give one mask per image, in order")
        for it, m in zip(items, masks):
            if isinstance(m, torch.Tensor):
                m = m.detach().cpu().numpy()
            if isinstance(m, tuple):  # several mask files of one image, like a list
                m = list(m)
            it.mask = m if isinstance(m, (np.ndarray, list, LesionBox)) or m is None else [str(m)]
            it.mask_given = it.has_mask_input
    return items, notes


def expand_frames_of_items(items: list[PredictItem], reader_options: dict[str, Any] | None) -> list[PredictItem]:
    """Apply the checkpoint's frame policy to the items, as training applied it to its datalist.

    With ``data.reader_options.dicom.frame: all`` a model was trained on one sample per frame, so
    each frame of a multi-frame DICOM input becomes an item of its own (record id suffixed ``_fK``,
    as :func:`breastai.data.frames.expand_frames` suffixes case ids); other policies keep the items.
    """
    files = [k for k, it in enumerate(items) if not isinstance(it.image, np.ndarray) and Path(str(it.image)).is_file()]
    rows = expand_frames([{"image": str(items[k].image), "case_id": "", "item": k} for k in files], reader_options)
    if all("frame" not in r for r in rows):
        return items
    frames: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        frames.setdefault(r["item"], []).append(r)
    out: list[PredictItem] = []
    for k, it in enumerate(items):
        parts = frames.get(k, [{}])
        out.extend(replace(it, frame=r.get("frame"), frame_suffix=len(parts) > 1) for r in parts)
    return out
