"""The map writers of a predict run: saliency maps and a segmenter's outlines as ``.npy`` and PNG files.

Both are :class:`~breastai.inference.writers.Writer` plug-ins of
:func:`~breastai.inference.writers.run_predict` (re-exported there). Each run writes into a fresh
``OUT/saliency/<run_id>/`` (and ``OUT/outlines/<run_id>/``) folder, marked as predict output, that
``run_predict`` swaps in with the tables at the end and that a failed run removes.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from breastai.core.files import atomic_write_bytes
from breastai.inference.inputs import RUN_MARKER
from breastai.inference.records import Maps
from breastai.models.saliency import heat_overlay

__all__ = ["SaliencyMaps", "OutlineMaps", "MAP_MAX_SIDE", "MAP_FOLDERS", "safe_stem"]


def safe_stem(text: str) -> str:
    """A file-name stem of a record id: letters, digits, ``.``, ``_`` and ``-`` only, at most 80 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).stem if "." in text else text).strip("_")[:80] or "image"


# Maps and overlays of larger images are stored reduced to this many pixels on the longer side: a
# 5355x4915 mammogram's full-size float32 map is 105 MB and its overlay PNG 7 MB, terabytes over
# an archive, while Grad-CAM's map has a 7x7 to 14x14 cell grid's worth of detail.
MAP_MAX_SIDE = 1024


def _reduced(arr: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    import torch

    t = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=shape, mode=mode)[0, 0].numpy()


class _RunMaps:
    """Per-record ``.npy`` arrays and PNG overlays in a fresh ``OUT/<folder>/<run_id>/`` of the run.

    Arrays of an image larger than ``max_side`` pixels on its longer side are stored reduced (area
    averaging; masks stay masks) to ``max_side`` on that side, same aspect. The folder is made at
    :meth:`start` (``eager``) or with the first file, marked as predict output, and removed on abort.
    """

    folder = ""
    eager = True
    fields: tuple[str, ...] = ()

    def __init__(self, max_side: int = MAP_MAX_SIDE) -> None:
        if max_side < 0:
            raise ValueError(f"the map size limit must be >= 0 (0: full size), got {max_side}")
        self.max_side = int(max_side)
        self.dir: Path | None = None
        self.out, self.rel = Path(), Path()
        self.run_id: str | None = None

    def start(self, out: Path, run_id: str) -> None:
        self.run_id, self.rel, self.out, self.dir = run_id, Path(self.folder) / run_id, out, None
        if self.eager:
            self._folder()

    def settings(self) -> dict[str, Any]:
        return {"max_side": self.max_side}

    def _folder(self) -> Path:
        if self.dir is None:
            self.dir = self.out / self.rel
            # Run ids are unique: the folder exists only when this run resumes an interrupted one.
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / RUN_MARKER).write_text(str(self.run_id))
        return self.dir

    def _shrink(self, *arrays: np.ndarray | None) -> list[np.ndarray | None]:
        """``arrays`` (one shape) reduced to ``max_side`` where larger; boolean ones (masks) stay boolean."""
        shape = next(a.shape for a in arrays if a is not None)
        longest = max(shape)
        if not self.max_side or longest <= self.max_side:
            return list(arrays)
        size = tuple(max(1, round(v * self.max_side / longest)) for v in shape)
        out: list[np.ndarray | None] = []
        for a in arrays:
            small = None if a is None else _reduced(a, size, "area")
            out.append(small > 0.5 if small is not None and a.dtype == bool else small)
        return out

    def _save(self, index: int, record: dict[str, Any], arr: np.ndarray, rgb: np.ndarray, what: str) -> tuple[str, str] | None:
        """Write ``NNNNN_<id>.npy`` (``arr``) and ``.png`` (``rgb``); their paths under OUT, or None
        (the record's ``error`` then says why)."""
        from PIL import Image

        stem = f"{index:05d}_{safe_stem(str(record['id']))}"
        try:
            folder = self._folder()
            buf = io.BytesIO()
            np.save(buf, arr)
            atomic_write_bytes(folder / f"{stem}.npy", buf.getvalue())
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
            atomic_write_bytes(folder / f"{stem}.png", buf.getvalue())
        except OSError as exc:
            record["error"] = f"{record['source']}: cannot write {what} files ({exc})"
            return None
        return str(self.rel / f"{stem}.png"), str(self.rel / f"{stem}.npy")

    def finish(self, records: Iterable[dict[str, Any]], run: dict[str, Any]) -> None:
        pass

    def abort(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


class SaliencyMaps(_RunMaps):
    """Stores each record's map as ``.npy`` (float32) and a PNG overlay under
    ``OUT/saliency/<run_id>/``, and names them in the record (``saliency_png``, ``saliency_npy``,
    and ``saliency_shape``: the original image's ``HxW``).

    Maps are in the original image geometry (reader crop and flip, network crop and resize undone).
    Of an image larger than ``max_side`` pixels on its longer side, map and overlay are stored
    reduced (area averaging) to ``max_side`` on that side, same aspect: resize the map to
    ``saliency_shape`` (bilinear) to put it back on the image's pixels. ``max_side=0`` stores
    every map at full size.
    """

    folder = "saliency"
    fields = ("saliency_shape",)

    def write_item(self, index: int, record: dict[str, Any], maps: Maps | None) -> None:
        if maps is None or maps[0] is None or self.dir is None:  # no map: a run without saliency
            return
        smap, image, mask = maps
        original = tuple(int(v) for v in smap.shape)
        smap, image, mask = self._shrink(smap, image, mask)
        saved = self._save(index, record, smap.astype(np.float32), heat_overlay(image, smap, mask), "saliency")
        if saved is not None:
            record["saliency_png"], record["saliency_npy"] = saved
            record["saliency_shape"] = f"{original[0]}x{original[1]}"


class OutlineMaps(_RunMaps):
    """Stores the outline of each lesion a segmenter found, on the image as stored (reader crop and
    flip undone), as a boolean ``.npy`` and a PNG overlay (the grey image with the outline in green)
    under ``OUT/outlines/<run_id>/``, named in the record by ``outline_png`` and ``outline_npy``.

    Of an image larger than ``max_side`` pixels on its longer side both are stored reduced to
    ``max_side`` on that side, like the saliency maps (resize the mask back, nearest, to the
    image's size). Records whose outline was given (mask or box) or that have none get no files; a
    run without a segmenter makes no folder.
    """

    folder = "outlines"
    eager = False
    fields = ("outline_png", "outline_npy")

    def write_item(self, index: int, record: dict[str, Any], maps: Maps | None) -> None:
        outline = record.get("_outline")
        if outline is None or record.get("error"):
            return
        image, mask = self._shrink(*outline)
        saved = self._save(index, record, np.asarray(mask, bool), heat_overlay(image, None, mask), "outline")
        if saved is not None:
            record["outline_png"], record["outline_npy"] = saved


MAP_FOLDERS = (SaliencyMaps.folder, OutlineMaps.folder)
