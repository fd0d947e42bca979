"""Preprocessing presets: the one definition shared by training, evaluation and inference.

A sample is a dict keyed by name (MONAI style; the names are :class:`breastai.core.keys.Keys`):
``image`` (path, then array), ``mask`` (list of paths, then array), ``label``, ``case_id``,
``group``. The deterministic part

    load -> grey float -> intensity normalisation -> square box (whole image or lesion crop)
    -> resize to ``size`` [-> histogram equalisation of the cut region, ``preprocess.equalize``]

is cached; the random part (training only, :mod:`breastai.data.augment`) follows it. ``box`` records the square region of the
source image that became the network input, so maps can be sent back to the original geometry.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import Compose, MapTransform

from breastai.core.keys import Keys
from breastai.data.augment import random_transforms, shown_outline, smooth_outline
from breastai.data.geometry import crop_resize, square_box
from breastai.data.readers.masks import LesionBox, load_mask, mask_on_reader_grid
from breastai.data.readers.registry import (ImageReadError, check_finite, frame_options, load_image, max_pixels_option,
                                            to_grey)

__all__ = [
    "LoadSampled",
    "NormalizeIntensityRobustd",
    "SquareBoxd",
    "ToInputd",
    "SmoothOutlined",
    "EqualizeHistd",
    "square_box",
    "deterministic_transforms",
    "build_transforms",
    "Preset",
    "root_cause",
    "KeepFullImaged",
    "FULL_IMAGE",
    "FULL_MASK",
    "MIN_IMAGE_SIDE",
]

# An image with fewer pixels a side than the networks' total stride (32) fills less than one
# cell of their last feature map once resized: there is nothing to classify or explain in it.
MIN_IMAGE_SIDE = 32


class LoadSampled(MapTransform):
    """Read ``image`` and the union of ``mask`` files into (1, H, W) float32 arrays.

    A sample without a mask gets an all-zero mask and ``has_mask = False``. Mask files are read
    under the image's size limit (``reader_options["max_pixels"]``). An image with a NaN or
    infinite pixel is refused: whatever value replaced them would be scored as tissue.
    """

    def __init__(self, reader_options: dict[str, Any] | None = None):
        super().__init__(keys=[Keys.IMAGE])
        self.reader_options = reader_options or {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        src = d[Keys.IMAGE]
        if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
            # one frame of a multi-frame row (frame policy "all")
            img, meta = load_image(src, frame_options(self.reader_options, d.get(Keys.FRAME)))
            d[Keys.SOURCE] = str(src)
        else:  # an in-memory array: the inference API, or a file the Predictor has read (its reader's meta given)
            img = to_grey(np.asarray(src), "array input")
            meta = d.pop(Keys.READER_META, None) or {"reader": "array"}
            d.setdefault(Keys.SOURCE, "<array>")
        if min(img.shape) < MIN_IMAGE_SIDE:
            raise ImageReadError(f"{d['source']}: image {img.shape} is too small (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} "
                                 "pixels needed)")
        check_finite(img, d[Keys.SOURCE])
        m = d.get(Keys.MASK)
        if isinstance(m, LesionBox):
            mask = m.to_mask(img.shape, meta, d[Keys.SOURCE])
        elif isinstance(m, np.ndarray) or torch.is_tensor(m):
            mask = mask_on_reader_grid(np.asarray(m), img.shape, meta, f"{d['source']}: mask array")
        elif m:
            mask = load_mask(m, img.shape, meta, max_pixels_option(self.reader_options))
        else:
            mask = np.zeros(img.shape, dtype=bool)
        # An empty mask is legitimate for whole-image samples (BUSI "normal"); crop mode refuses it.
        d[Keys.HAS_MASK] = bool(mask.any())
        d[Keys.IMAGE] = img[None].astype(np.float32, copy=False)
        d[Keys.MASK] = mask[None].astype(np.float32)
        d[Keys.ORIG_SHAPE] = np.asarray(img.shape, dtype=np.int64)
        for key, k in ((Keys.READER_FLIPPED_LR, "flipped_lr"), (Keys.READER_CROP_BOX, "crop_box")):
            if k in meta and meta[k] is not None:
                d[key] = np.asarray(meta[k])
        return d


class NormalizeIntensityRobustd(MapTransform):
    """Map intensities to about [0, 1], independent of bit depth and scanner gain.

    ``percentile``: clip to the image's low/high percentiles, then scale (robust to burnt-in
    text and calipers, which are few bright pixels). ``zscore``: (x - mean) / sd, then squashed by
    a logistic to (0, 1). ``minmax``: plain min-max.
    """

    def __init__(self, method: str = "percentile", percentiles: tuple[float, float] = (0.5, 99.5)):
        super().__init__(keys=[Keys.IMAGE])
        self.method = method
        self.percentiles = tuple(percentiles)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        x = d[Keys.IMAGE].astype(np.float32, copy=False)
        if self.method == "percentile":
            # Percentiles on a subsample: identical in expectation, far cheaper on 25-Mpixel mammograms.
            flat = x.ravel()
            sample = flat[:: max(1, flat.size // 250_000)]
            lo, hi = np.percentile(sample, self.percentiles)
            y = (np.clip(x, lo, hi) - lo) / max(hi - lo, 1e-6)
        elif self.method == "zscore":
            y = 1.0 / (1.0 + np.exp(-(x - x.mean()) / max(float(x.std()), 1e-6)))
        else:
            lo, hi = float(x.min()), float(x.max())
            y = (x - lo) / max(hi - lo, 1e-6)
        d[Keys.IMAGE] = y.astype(np.float32)
        return d


class SquareBoxd(MapTransform):
    """Cut the square input region and resize image and mask to ``size``.

    The box is :func:`breastai.data.geometry.square_box` and the cut
    :func:`breastai.data.geometry.crop_resize`, the forward half of the geometry whose inverse
    (:func:`breastai.data.geometry.map_to_original`) sends maps back.
    """

    def __init__(self, mode: str, size: int, margin: float = 0.3, min_side: int = 64, min_fraction: float = 0.0):
        super().__init__(keys=[Keys.IMAGE, Keys.MASK])
        self.mode, self.size, self.margin, self.min_side = mode, int(size), float(margin), int(min_side)
        self.min_fraction = float(min_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = d[Keys.MASK][0] > 0.5
        if self.mode == "crop" and not mask.any():
            raise ImageReadError(f"{d.get('source', '<array>')}: lesion-crop mode needs a non-empty lesion mask")
        box = square_box(mask, d[Keys.IMAGE].shape[1:], self.mode, self.margin, self.min_side, self.min_fraction)
        d[Keys.BOX] = box
        d[Keys.IMAGE] = crop_resize(d[Keys.IMAGE], box, self.size, "bilinear")
        d[Keys.MASK] = (crop_resize(d[Keys.MASK], box, self.size, "bilinear") > 0.5).astype(np.float32)
        return d


class EqualizeHistd(MapTransform):
    """Histogram equalisation of the cut region: each pixel replaced by its rank among the region's
    non-black pixels, y = (#{v < x} + #{v <= x}) / 2n over those n pixels v (mid-ranks for ties).

    Black pixels (the scanner's empty background, the zero padding past the image's edge) stay 0
    and are left out of the ranking, so how much of them the crop holds does not shift the
    tissue's grey levels. Any strictly increasing grey curve T with T(0) = 0 gives the same
    output, which is what scanners differ by (gain, dynamic range, post-processing curves); what
    is kept is each pixel's rank in the region, the lesion's echogenicity relative to its
    surroundings. Exact ranks rather than a binned histogram (MONAI's ``equalize_hist``): with
    bins, where the bin edges fall moves with the curve, and a dark lesion packed into a few bins
    shifts by up to a bin's mass.
    """

    def __init__(self, keys: Sequence[str] = (Keys.IMAGE,), min_pixels: int = 16):
        super().__init__(keys=list(keys))
        self.min_pixels = int(min_pixels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = np.asarray(d[key], dtype=np.float32)
            content = x > 0
            ranked = np.sort(x[content])
            if ranked.size >= self.min_pixels:  # an (almost) empty region has no histogram to equalise
                below = np.searchsorted(ranked, x, side="left") + np.searchsorted(ranked, x, side="right")
                d[key] = np.where(content, below / (2.0 * ranked.size), 0.0).astype(np.float32)
        return d


class SmoothOutlined(MapTransform):
    """The mask channel's outline smoothed by a Gaussian of sigma ``fraction`` times the lesion's
    equivalent diameter, thresholded at 1/2 (:func:`breastai.data.augment.jitter_outline`,
    ``smooth``), in training and at inference alike; ``mask`` itself is unchanged.

    How finely a reader follows the edge is a habit of the reader, not a property of the lesion:
    BUSI's readers trace benign lesions smoothly and malignant ones jaggedly, BrEaST's readers
    trace every lesion with a rough polygon, so a model that learnt BUSI's fine edge calls
    BrEaST's benign lesions malignant (docs/experiments.md). Smoothed, every outline keeps its
    lobulation and loses the reader's pixel-scale roughness."""

    def __init__(self, fraction: float):
        super().__init__(keys=[Keys.MASK])
        self.fraction = float(fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[Keys.OUTLINE] = smooth_outline(shown_outline(d), self.fraction)[None]
        return d


class ToInputd(MapTransform):
    """Final network input: ``image`` (C, S, S) float tensor, C = 2 when the mask is a channel."""

    def __init__(self, mask_channel: bool, class_names: list[str] | None):
        super().__init__(keys=[Keys.IMAGE])
        self.mask_channel = mask_channel
        self.class_names = class_names

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img = torch.as_tensor(np.asarray(d[Keys.IMAGE]), dtype=torch.float32).clamp_(0.0, 1.0)
        mask = torch.as_tensor(np.asarray(d[Keys.MASK]), dtype=torch.float32)
        outline = d.pop(Keys.OUTLINE, None)  # a coarse, jittered (training) or smoothed mask channel
        channel = mask if outline is None else torch.as_tensor(np.asarray(outline), dtype=torch.float32)
        d[Keys.IMAGE] = torch.cat([img, channel], 0) if self.mask_channel else img
        d[Keys.MASK] = mask
        if self.class_names is not None:
            lab = d.get(Keys.LABEL, "")
            d[Keys.LABEL] = self.class_names.index(lab) if lab in self.class_names else -1
        for k in (Keys.GROUP, Keys.SPLIT, Keys.FOLD, Keys.FRAME):
            d.pop(k, None)
        d[Keys.CASE_ID] = str(d.get(Keys.CASE_ID, ""))
        return d


FULL_IMAGE, FULL_MASK = "full_image", "full_mask"


class KeepFullImaged:
    """Keep the normalised full-resolution image and mask (before the crop) under their own keys
    (:data:`FULL_IMAGE`, :data:`FULL_MASK`).

    Inference draws its overlays on this image and computes lesion radiomics from it; a preset
    step (``full_image=``) keeps it by name rather than by finding a transform's class.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[FULL_IMAGE], d[FULL_MASK] = d[Keys.IMAGE][0], d[Keys.MASK][0]
        return d


def deterministic_transforms(pre: dict[str, Any], reader_options: dict[str, Any] | None = None,
                             full_image: Sequence[Callable[[dict[str, Any]], dict[str, Any]]] = ()) -> list:
    """The cached part of the preset: load, normalise, (``full_image`` steps), box, resize, and
    equalise the cut region where ``preprocess.equalize`` asks.

    ``full_image`` steps see the normalised image at its full resolution and its lesion mask on the
    same grid, before the crop: where lesion radiomics are computed, and where inference keeps the
    image its maps are drawn on.
    """
    return [
        LoadSampled(reader_options),
        NormalizeIntensityRobustd(pre["normalize"], tuple(pre["percentiles"])),
        *full_image,
        SquareBoxd(pre["mode"], pre["size"], pre["margin"], pre["min_crop"], pre["min_crop_fraction"]),
        *([EqualizeHistd()] if pre.get("equalize") else []),
    ]


def root_cause(exc: BaseException) -> BaseException:
    """The specific error inside MONAI's ``RuntimeError("applying transform ...")`` wrappers."""
    seen = exc
    while isinstance(seen, RuntimeError) and seen.__cause__ is not None and "applying transform" in str(seen):
        seen = seen.__cause__
    return seen


class Preset(Compose):
    """A Compose that raises the transform's own error (naming the file), not MONAI's wrapper."""

    def __call__(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(data, *args, **kwargs)
        except RuntimeError as exc:
            cause = root_cause(exc)
            if cause is exc:
                raise
            raise cause from None


def build_transforms(cfg: dict[str, Any], train: bool,
                     full_image: Sequence[Callable[[dict[str, Any]], dict[str, Any]]] = ()) -> Compose:
    """The full preset for training (with augmentation) or evaluation/inference (without).

    ``full_image``: extra steps on the normalised full-resolution image and mask (see
    :func:`deterministic_transforms`).
    """
    pre = cfg["preprocess"]
    det = deterministic_transforms(pre, cfg["data"].get("reader_options"), full_image)
    rnd = random_transforms(cfg["augment"], int(pre["size"])) if train else []
    # After the random part: the affine moves image and mask only, so the outline is taken last.
    smooth = [SmoothOutlined(pre["outline_smooth"])] if float(pre.get("outline_smooth", 0)) > 0 else []
    return Preset([*det, *rnd, *smooth, ToInputd(bool(pre["mask_channel"]), list(cfg["data"]["classes"]))])

