"""Training-only augmentation: the random part of the training preset.

Each transform is aimed at something that changes between hospitals while the lesion does not:
the scanner's gain and speckle grain (intensity, speckle, blur, noise), how the reader traced the
outline (coarse outlines, jittered outlines), and the marks a sonographer leaves on the image
(calipers). The deterministic part of the preset is :mod:`breastai.data.transforms`.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
from monai.transforms import (
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
)
from scipy import ndimage

from breastai.core.keys import Keys

__all__ = [
    "coarse_outline",
    "jitter_outline",
    "equivalent_diameter",
    "smooth_outline",
    "shown_outline",
    "draw_calipers",
    "RandCoarseOutlined",
    "RandOutlineJitterd",
    "RandSpeckled",
    "RandCalipersd",
    "random_transforms",
]


def coarse_outline(mask: np.ndarray, kind: str) -> np.ndarray:
    """A coarse stand-in for a traced (H, W) lesion mask: ``ellipse`` (the ellipse with the mask's
    centroid and second moments, ``(p - c)^T S^-1 (p - c) <= 4`` with S the pixel covariance, as a
    uniform ellipse of semi-axes a, b has variances a^2/4, b^2/4) or ``box`` (its bounding box)."""
    m = np.asarray(mask) > 0.5
    ys, xs = np.nonzero(m)
    out = np.zeros(m.shape, np.float32)
    if len(ys) == 0:
        return out
    if kind == "box":
        out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = 1.0
        return out
    pts = np.stack([ys, xs], 1).astype(np.float64)
    c = pts.mean(0)
    cov = np.cov(pts.T, bias=True) + np.eye(2) / 12.0  # + the variance of one pixel: no degenerate lines
    (a, b), (_, e) = np.linalg.inv(cov)
    dy = np.arange(m.shape[0])[:, None] - c[0]
    dx = np.arange(m.shape[1])[None, :] - c[1]
    out[a * dy * dy + 2.0 * b * dy * dx + e * dx * dx <= 4.0] = 1.0
    return out


class RandCoarseOutlined(Randomizable, MapTransform):
    """With probability ``prob``, the mask *channel* shows a coarse outline (moment ellipse or
    bounding box, half the time each) instead of the traced one; ``mask`` itself is unchanged.

    A model given the traced outline leans on its fine shape; users often supply a rough ellipse or
    box, where such a model loses most of its accuracy. Seeing coarse outlines in training keeps the
    image features in use."""

    def __init__(self, prob: float):
        MapTransform.__init__(self, keys=[Keys.MASK])
        self.prob = prob

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.R.rand() < self.prob:
            kind = "ellipse" if self.R.rand() < 0.5 else "box"
            d[Keys.OUTLINE] = coarse_outline(np.asarray(d[Keys.MASK])[0], kind)[None]
        return d


JITTER_KINDS = ("dilate", "erode", "smooth")


def jitter_outline(mask: np.ndarray, kind: str, radius: float) -> np.ndarray:
    """The (H, W) outline another reader might have traced for the same lesion.

    ``dilate``: every pixel within ``radius`` of the lesion (a trace just outside the edge);
    ``erode``: the pixels further than ``radius`` inside it (a trace just inside the edge; the
    outline is kept as it was when less than a quarter would survive); ``smooth``: the lesion
    convolved with a Gaussian of sigma ``radius`` and thresholded at 1/2 (a trace that follows
    the edge loosely, rounding off lobules and spicules). Distances are Euclidean, in pixels.
    """
    m = np.asarray(mask) > 0.5
    if not m.any() or radius <= 0:
        return m.astype(np.float32)
    if kind == "dilate":
        out = ndimage.distance_transform_edt(~m) <= radius
    elif kind == "erode":
        out = ndimage.distance_transform_edt(m) > radius
        if out.sum() < 0.25 * m.sum():
            out = m
    elif kind == "smooth":
        out = ndimage.gaussian_filter(m.astype(np.float32), radius) > 0.5
        if not out.any():
            out = m
    else:
        raise ValueError(f"jitter_outline: kind must be one of {', '.join(JITTER_KINDS)}, got {kind!r}")
    return out.astype(np.float32)


def equivalent_diameter(mask: np.ndarray) -> float:
    """The diameter of the disc with the mask's area, ``2 sqrt(area / pi)``, in pixels."""
    return float(2.0 * np.sqrt((np.asarray(mask) > 0.5).sum() / np.pi))


def smooth_outline(mask: np.ndarray, fraction: float) -> np.ndarray:
    """:func:`jitter_outline` ``smooth`` with sigma ``fraction`` times the mask's equivalent diameter."""
    return jitter_outline(mask, "smooth", fraction * equivalent_diameter(mask))


def shown_outline(data: Mapping[Hashable, Any]) -> np.ndarray:
    """The (H, W) outline the mask channel will show: a replaced one (``outline``) or the traced mask."""
    return np.asarray(data[Keys.OUTLINE] if Keys.OUTLINE in data else data[Keys.MASK])[0]


class RandOutlineJitterd(Randomizable, MapTransform):
    """With probability ``prob``, the mask *channel* shows the outline dilated, eroded or smoothed
    (a third of the time each) by a radius drawn uniformly from 1 pixel to ``strength`` times the
    lesion's equivalent diameter (``2 sqrt(area / pi)``); ``mask`` itself is unchanged.

    Readers at another hospital trace a few pixels outside or inside the edge, or more loosely; a
    model that learnt one reader's exact edge reads theirs as a different shape. Applied after
    :class:`RandCoarseOutlined`, so it also jitters a coarse outline."""

    def __init__(self, prob: float, strength: float = 0.06):
        MapTransform.__init__(self, keys=[Keys.MASK])
        self.prob, self.strength = prob, strength

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.R.rand() < self.prob:
            outline = shown_outline(d)
            radius = self.R.uniform(1.0, max(1.0, self.strength * equivalent_diameter(outline)))
            kind = JITTER_KINDS[self.R.randint(len(JITTER_KINDS))]
            d[Keys.OUTLINE] = jitter_outline(outline, kind, radius)[None]
        return d


def _edge_point(inside: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Where a ray from ``centre`` first leaves ``inside`` (or the image)."""
    h, w = inside.shape
    ts = np.arange(0.0, float(h + w))
    pts = np.rint(centre[None] + ts[:, None] * direction[None]).astype(int)
    ok = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
    ok[ok] = inside[pts[ok, 0], pts[ok, 1]]
    first_out = int(np.argmin(ok)) if not ok.all() else len(ts)
    return pts[max(first_out - 1, 0)].astype(np.float64)


def _stamp(img: np.ndarray, r: int, c: int, value: float) -> None:
    if 0 <= r < img.shape[0] and 0 <= c < img.shape[1]:
        img[r, c] = value


def draw_calipers(image: np.ndarray, mask: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """The (H, W) image with one or two pairs of caliper marks on the lesion's edge.

    Each pair measures a diameter in a random direction: a '+' or an 'x' (arms of 3-6 pixels,
    one or two pixels thick, brightness 0.75-1.0 of the normalised range) where the ray from the
    lesion's centroid leaves the mask, at both ends, and half the time a dotted line between them,
    as scanners burn them in. Without a lesion the marks measure a disc around the centre.
    """
    img = np.array(image, dtype=np.float32, copy=True)
    h, w = img.shape
    inside = np.asarray(mask) > 0.5
    if not inside.any():
        yy, xx = np.mgrid[:h, :w]
        inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (min(h, w) / 4) ** 2
    centre = np.argwhere(inside).mean(0)
    for _ in range(rng.randint(1, 3)):
        angle = rng.uniform(0.0, np.pi)
        direction = np.array([np.sin(angle), np.cos(angle)])
        ends = [_edge_point(inside, centre, s * direction) + rng.uniform(-2, 2, 2) for s in (1.0, -1.0)]
        value, arm, thick = rng.uniform(0.75, 1.0), rng.randint(3, 7), rng.randint(1, 3)
        diagonal = rng.rand() < 0.5
        for r0, c0 in (np.rint(e).astype(int) for e in ends):
            for t in range(-arm, arm + 1):
                for k in range(thick):
                    if diagonal:
                        _stamp(img, r0 + t, c0 + t + k, value)
                        _stamp(img, r0 + t, c0 - t + k, value)
                    else:
                        _stamp(img, r0 + t, c0 + k, value)
                        _stamp(img, r0 + k, c0 + t, value)
        if rng.rand() < 0.5:
            (r0, c0), (r1, c1) = ends
            n = int(np.hypot(r1 - r0, c1 - c0))
            for t in np.arange(0, n, 4) / max(n, 1):
                _stamp(img, int(round(r0 + t * (r1 - r0))), int(round(c0 + t * (c1 - c0))), value)
    return img


class RandCalipersd(Randomizable, MapTransform):
    """With probability ``prob``, caliper marks are drawn on the image across the lesion
    (:func:`draw_calipers`); the mask is unchanged.

    Sonographers measure lesions they suspect, so burnt-in calipers can track the label at one
    hospital and not at the next; drawn at random on both classes, they carry no label."""

    def __init__(self, prob: float):
        MapTransform.__init__(self, keys=[Keys.IMAGE])
        self.prob = prob

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.R.rand() < self.prob:
            image = np.asarray(d[Keys.IMAGE])
            d[Keys.IMAGE] = draw_calipers(image[0], np.asarray(d[Keys.MASK])[0], self.R)[None].astype(image.dtype)
        return d


class RandSpeckled(Randomizable, MapTransform):
    """Multiplicative gamma speckle: scanner and frequency differences change the speckle grain."""

    def __init__(self, prob: float, strength: float = 0.25):
        MapTransform.__init__(self, keys=[Keys.IMAGE])
        self.prob, self.strength = prob, strength

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.R.rand() < self.prob:
            k = 1.0 / self.strength**2
            noise = self.R.gamma(k, 1.0 / k, size=np.asarray(d[Keys.IMAGE]).shape).astype(np.float32)
            d[Keys.IMAGE] = np.clip(np.asarray(d[Keys.IMAGE]) * noise, 0, 1)
        return d


def random_transforms(aug: dict[str, Any], size: int) -> list:
    """Training-only augmentation, aimed at scanner and acquisition differences."""
    if not aug.get("enabled", True):
        return []
    keys = ["image", "mask"]
    t: list = []
    if aug["hflip"] > 0:
        t.append(RandFlipd(keys, prob=aug["hflip"], spatial_axis=1))
    if aug["vflip"] > 0:
        t.append(RandFlipd(keys, prob=aug["vflip"], spatial_axis=0))
    if aug["affine"] > 0:
        t.append(
            RandAffined(
                keys,
                prob=aug["affine"],
                rotate_range=np.deg2rad(aug["rotate_deg"]),
                scale_range=(aug["scale"], aug["scale"]),
                translate_range=(aug["translate"] * size, aug["translate"] * size),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if aug.get("calipers", 0) > 0:
        t.append(RandCalipersd(aug["calipers"]))
    if aug["contrast_prob"] > 0:
        t.append(RandAdjustContrastd(["image"], prob=aug["contrast_prob"], gamma=tuple(aug["gamma"])))
    if aug.get("speckle_prob", 0) > 0:
        t.append(RandSpeckled(aug["speckle_prob"]))
    if aug["blur_prob"] > 0:
        t.append(RandGaussianSmoothd(["image"], prob=aug["blur_prob"], sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)))
    if aug["noise_prob"] > 0:
        t.append(RandGaussianNoised(["image"], prob=aug["noise_prob"], std=aug["noise_std"]))
    if aug.get("coarse_outline", 0) > 0:
        t.append(RandCoarseOutlined(aug["coarse_outline"]))
    if aug.get("outline_jitter", 0) > 0:
        t.append(RandOutlineJitterd(aug["outline_jitter"], aug.get("outline_jitter_strength", 0.06)))
    return t
