"""Exact and near-duplicate image detection, robust to re-cropping and re-scaling.

Public datasets such as BUSI hold the same ultrasound frame several times: byte-identical
copies, copies cropped to a different border, copies re-scaled, and adjacent frames of one
lesion. A perceptual hash of the whole image misses most of them because a crop moves every
pixel of a thumbnail. Here a copy is recognised by finding the central part of one image
inside the other:

1. *Exact*: identical file bytes or identical decoded pixels.
2. *Shortlist*: every image is reduced to a small canonical size (same area for all) and
   band-passed (the depth-dependent brightness common to all ultrasound images removed); the
   central patch of each image, resampled at a few relative scales, is located in every other
   image by FFT normalised cross-correlation (NCC). The best score over positions, scales and
   both directions ranks candidate partners.
3. *Verification*: the best candidates of each image are matched again at a finer resolution
   over a finer range of scales around the shortlist scale. At the best match the template is
   cut into sub-blocks and each is correlated on its own: a copy or an adjacent frame matches
   in most blocks, while unrelated images that share one strong edge (the wall of a large
   cyst) do not. Pairs whose block score reaches ``threshold`` (and whose whole-template NCC
   reaches ``min_ncc``) are duplicates.
4. Pairs are joined into groups by union-find.

Everything is numpy; nothing is cached on disk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "DedupConfig",
    "DuplicatePair",
    "DedupResult",
    "find_duplicates",
    "find_duplicate_pairs",
    "union_find_groups",
    "ncc_match",
]


@dataclass
class DedupConfig:
    """Parameters of the duplicate detector.

    Attributes:
        threshold: block score at or above which a verified pair is a duplicate. The block
            score is the mean of the median and the lower quartile of the NCCs of the
            ``blocks x blocks`` sub-blocks of the template at its best match: one strong edge
            (the wall of a large cyst) can give a high NCC to unrelated images, but only a
            copy or an adjacent frame matches in most sub-blocks.
        min_ncc: the whole template's fine NCC must also reach this.
        coarse_threshold: shortlist NCC below which a pair is never verified.
        shortlist: how many best shortlist partners of each image are verified.
        coarse_side: side (pixels) of the square with the canonical area of the shortlist stage.
        fine_side: the same for the verification stage.
        patch_frac: side of the central template as a fraction of the canonical side.
        scale_range: smallest and largest relative scale between two copies.
        coarse_scales: number of scales tried in the shortlist stage (log-spaced).
        fine_scale_step: relative step of the scales tried in the verification stage.
        fine_scale_span: the verification stage tries the shortlist scale times
            ``(1 +- fine_scale_span)``.
        min_patch_std: templates flatter than this (in units of the image's own standard
            deviation) are not used, since a flat patch matches anything.
        coarse_highpass: Gaussian sigma (canonical pixels) of the low frequencies removed
            before the shortlist stage.
        fine_highpass: the same for the verification stage.
        blocks: sub-blocks per side for the block score.
    """

    threshold: float = 0.40
    min_ncc: float = 0.58
    coarse_threshold: float = 0.62
    shortlist: int = 4
    coarse_side: int = 32
    fine_side: int = 128
    patch_frac: float = 0.40
    scale_range: tuple[float, float] = (0.76, 1.32)
    coarse_scales: int = 5
    fine_scale_step: float = 0.035
    fine_scale_span: float = 0.07
    min_patch_std: float = 0.15
    coarse_highpass: float = 1.5
    fine_highpass: float = 3.0
    blocks: int = 4


@dataclass(frozen=True)
class DuplicatePair:
    """Two images judged copies of one another (indices into the input list)."""

    i: int
    j: int
    score: float  # block score (see DedupConfig.threshold), 1.0 for exact copies
    ncc: float = 1.0  # NCC of the whole template
    scale: float = 1.0  # size of image i's content in image j relative to image i
    kind: str = "exact"  # "exact" or "near"


@dataclass
class DedupResult:
    """Outcome of :func:`find_duplicates`.

    Attributes:
        groups: group index of every image; images without a copy have their own group.
        pairs: the accepted pairs.
        candidates: every verified candidate pair with its fine score (accepted or not),
            to inspect pairs near the threshold.
    """

    groups: list[int]
    pairs: list[DuplicatePair]
    candidates: list[DuplicatePair] = field(default_factory=list)

    def duplicate_groups(self) -> list[list[int]]:
        """Groups with more than one member, each sorted, in order of first member."""
        members: dict[int, list[int]] = {}
        for idx, g in enumerate(self.groups):
            members.setdefault(g, []).append(idx)
        return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def union_find_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Connected components of ``n`` items joined by ``pairs``.

    Returns:
        A group index per item, numbered 0.. in order of each group's first item.
    """
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    labels: dict[int, int] = {}
    return [labels.setdefault(find(k), len(labels)) for k in range(n)]


# --------------------------------------------------------------------------- resampling


def _resize(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a float image to (rows, cols)."""
    h, w = max(1, int(shape[0])), max(1, int(shape[1]))
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.float32)


def _prepare(arr: np.ndarray, side: int, highpass: float) -> tuple[np.ndarray, float]:
    """Canonical-area, band-passed, standardised image and the resize factor applied.

    Every image is brought to the area ``side**2`` so that copies of one frame at different
    pixel sizes land at similar scales. The low frequencies (depth-dependent brightness,
    large dark areas) are removed because they are alike in every breast ultrasound image
    and make unrelated images correlate; what is left is the structure that identifies a frame.
    """
    from scipy.ndimage import gaussian_filter

    f = side / float(np.sqrt(arr.shape[0] * arr.shape[1]))
    img = _resize(arr, (round(arr.shape[0] * f), round(arr.shape[1] * f)))
    img = img - gaussian_filter(img, highpass, mode="reflect")
    sd = float(img.std())
    return (img - float(img.mean())) / (sd if sd > 0 else 1.0), f


class _Matcher:
    """FFT NCC of square templates against a fixed set of images (one canvas for all)."""

    def __init__(self, images: list[np.ndarray], patch: int) -> None:
        self.patch = patch
        self.canvas = (max(patch, *(a.shape[0] for a in images)), max(patch, *(a.shape[1] for a in images)))
        n = len(images)
        stack = np.zeros((n, *self.canvas), dtype=np.float32)
        # inv_norm is 1/local norm where a whole window fits the image and is not flat, else 0,
        # so invalid positions score 0 and never win the maximum.
        self.inv_norm = np.zeros((n, *self.canvas), dtype=np.float32)
        for k, a in enumerate(images):
            stack[k, : a.shape[0], : a.shape[1]] = a
            if min(a.shape) >= patch:
                ln = _local_norm(a, patch)
                self.inv_norm[k, : ln.shape[0], : ln.shape[1]] = np.where(ln > 0, 1.0 / np.maximum(ln, 1e-12), 0.0)
        self.fft = np.fft.rfft2(stack)

    def template_fft(self, templates: np.ndarray) -> np.ndarray:
        """Conjugate FFTs of (m, patch, patch) templates on the canvas."""
        pad = np.zeros((templates.shape[0], *self.canvas), dtype=np.float32)
        pad[:, : self.patch, : self.patch] = templates
        return np.conj(np.fft.rfft2(pad))

    def ncc_maps(self, tfft: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """NCC maps (m, t, rows, cols) of templates against target image indices; 0 where invalid."""
        corr = np.fft.irfft2(tfft[:, None] * self.fft[None, targets], s=self.canvas)
        corr *= self.inv_norm[None, targets]
        return corr

    def best(self, tfft: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Best NCC of each template (m,) in each target image index (t,): shape (m, t)."""
        corr = self.ncc_maps(tfft, targets)
        return corr.reshape(corr.shape[0], corr.shape[1], -1).max(-1)


def _template(img: np.ndarray, patch: int, scale: float, min_std: float) -> np.ndarray | None:
    """Central region of ``img`` that covers ``patch`` pixels once scaled by ``scale``.

    Returns a zero-mean, unit-norm ``patch x patch`` array, or None where the region does not
    fit in the image or is too flat to be informative.
    """
    side = patch / scale
    if side > min(img.shape) or side < 2:
        return None
    cy, cx = img.shape[0] / 2.0, img.shape[1] / 2.0
    s = int(round(side))
    y0, x0 = int(round(cy - s / 2)), int(round(cx - s / 2))
    t = _resize(img[y0 : y0 + s, x0 : x0 + s], (patch, patch))
    t = t - t.mean()
    norm = float(np.sqrt((t * t).sum()))
    if norm / patch < min_std:  # images are standardised, so this is relative to the image
        return None
    return t / norm


def _local_norm(img: np.ndarray, patch: int) -> np.ndarray:
    """sqrt of the windowed sum of squared deviations over windows fully inside ``img``.

    Zero where the window is flat (below 5% of the image's variance), since a flat window
    cannot anchor a match.
    """
    a = img.astype(np.float64)

    def win(x: np.ndarray) -> np.ndarray:
        c = np.zeros((x.shape[0] + 1, x.shape[1] + 1), dtype=np.float64)
        c[1:, 1:] = x.cumsum(0).cumsum(1)
        return c[patch:, patch:] - c[:-patch, patch:] - c[patch:, :-patch] + c[:-patch, :-patch]

    s1, s2 = win(a), win(a * a)
    var = s2 - s1 * s1 / (patch * patch)
    out = np.sqrt(np.maximum(var, 0.0))
    out[var < 0.05 * float(a.var()) * patch * patch] = 0.0
    return out.astype(np.float32)


def ncc_match(template: np.ndarray, image: np.ndarray) -> float:
    """Best normalised cross-correlation of a zero-mean unit-norm square template in ``image``.

    Returns 0.0 when the template does not fit.
    """
    m = _Matcher([np.asarray(image, dtype=np.float32)], template.shape[0])
    return float(m.best(m.template_fft(template[None]), np.array([0]))[0, 0])


# --------------------------------------------------------------------------- stages


def _scales(cfg: "DedupConfig") -> np.ndarray:
    lo, hi = cfg.scale_range
    return np.exp(np.linspace(np.log(lo), np.log(hi), cfg.coarse_scales))


def _shortlist_scores(images: list[np.ndarray], cfg: "DedupConfig") -> tuple[np.ndarray, np.ndarray]:
    """All-pairs coarse NCC: (score[i, j], scale[i, j]) for the centre of i found in j."""
    n = len(images)
    canon = [_prepare(a, cfg.coarse_side, cfg.coarse_highpass)[0] for a in images]
    patch = max(4, int(round(cfg.patch_frac * cfg.coarse_side)))
    matcher = _Matcher(canon, patch)
    best = np.zeros((n, n), dtype=np.float32)
    best_scale = np.ones((n, n), dtype=np.float32)
    everyone = np.arange(n)
    chunk = 8
    for s in _scales(cfg):
        temps = [_template(c, patch, float(s), cfg.min_patch_std) for c in canon]
        ok = np.array([t is not None for t in temps])
        for a in range(0, n, chunk):
            idx = np.arange(a, min(n, a + chunk))
            idx = idx[ok[idx]]
            if idx.size == 0:
                continue
            tfft = matcher.template_fft(np.stack([temps[k] for k in idx]))
            sc = matcher.best(tfft, everyone)
            better = sc > best[idx]
            best[idx] = np.where(better, sc, best[idx])
            best_scale[idx] = np.where(better, s, best_scale[idx])
    np.fill_diagonal(best, 0.0)
    return best, best_scale


def _block_score(template: np.ndarray, window: np.ndarray, blocks: int) -> float:
    """Mean of the median and lower quartile of sub-block NCCs between two aligned patches."""
    p = template.shape[0]
    edges = np.linspace(0, p, blocks + 1).astype(int)
    scores = []
    for y0, y1 in zip(edges[:-1], edges[1:]):
        for x0, x1 in zip(edges[:-1], edges[1:]):
            u = template[y0:y1, x0:x1] - template[y0:y1, x0:x1].mean()
            v = window[y0:y1, x0:x1] - window[y0:y1, x0:x1].mean()
            den = float(np.sqrt((u * u).sum() * (v * v).sum()))
            scores.append(float((u * v).sum()) / den if den > 0 else 0.0)
    return 0.5 * (float(np.median(scores)) + float(np.percentile(scores, 25)))


def _pixel_digest(arr: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()


def _exact_pairs(keys_per_image: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """Pairs of images sharing any key (file or pixel digest)."""
    first: dict[str, int] = {}
    pairs = []
    for k, keys in enumerate(keys_per_image):
        for key in keys:
            if key in first and first[key] != k:
                pairs.append((first[key], k))
            first.setdefault(key, k)
    return sorted(set(pairs))


def find_duplicate_pairs(
    images: Sequence[np.ndarray],
    config: DedupConfig | None = None,
    digests: Sequence[str | Sequence[str]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[DuplicatePair], list[DuplicatePair]]:
    """Find exact and near-duplicate pairs among 2D grey images.

    Args:
        images: 2D arrays of any sizes.
        config: detector parameters.
        digests: per-image digest(s) (file bytes, original pixels); images sharing one are
            exact duplicates. Without them the pixels of ``images`` are hashed.
        progress: optional callback receiving short status lines.

    Returns:
        (accepted pairs, all verified candidate pairs).
    """
    cfg = config or DedupConfig()
    imgs = [np.asarray(a, dtype=np.float32) for a in images]
    for k, a in enumerate(imgs):
        if a.ndim != 2 or min(a.shape) < 2:
            raise ValueError(f"image {k}: expected a 2D image, got shape {a.shape}")
    n = len(imgs)
    if digests is None:
        keys: list[list[str]] = [[_pixel_digest(a)] for a in imgs]
    else:
        keys = [[d] if isinstance(d, str) else list(d) for d in digests]
    pairs = {(i, j): DuplicatePair(i, j, 1.0, 1.0, 1.0, "exact") for i, j in _exact_pairs(keys)}
    if n < 2:
        return list(pairs.values()), []
    coarse, cscale = _shortlist_scores(imgs, cfg)
    if progress:
        progress("shortlist done")
    sym = np.maximum(coarse, coarse.T)
    cand: set[tuple[int, int]] = set()
    order = np.argsort(-sym, axis=1)[:, : min(cfg.shortlist, n - 1)]
    for i in range(n):
        for j in order[i]:
            if sym[i, j] >= cfg.coarse_threshold:
                cand.add((min(i, int(j)), max(i, int(j))))
    prepared = [_prepare(a, cfg.fine_side, cfg.fine_highpass) for a in imgs]
    fine = [p[0] for p in prepared]
    factor = [p[1] for p in prepared]
    patch = max(8, int(round(cfg.patch_frac * cfg.fine_side)))
    matcher = _Matcher(fine, patch)
    steps = int(round(cfg.fine_scale_span / cfg.fine_scale_step))
    verified: list[DuplicatePair] = []
    for i, j in sorted(cand):
        best: tuple[float, int, int, float, tuple[int, int], np.ndarray] | None = None
        for a, b in ((i, j), (j, i)):
            ss = [float(cscale[a, b]) * (1.0 + k * cfg.fine_scale_step) for k in range(-steps, steps + 1)]
            temps = [(s, _template(fine[a], patch, s, cfg.min_patch_std)) for s in ss]
            temps = [(s, t) for s, t in temps if t is not None]
            if not temps:
                continue
            maps = matcher.ncc_maps(matcher.template_fft(np.stack([t for _, t in temps])), np.array([b]))[:, 0]
            k, y, x = np.unravel_index(int(np.argmax(maps)), maps.shape)
            if best is None or maps[k, y, x] > best[0]:
                best = (float(maps[k, y, x]), a, b, temps[k][0], (int(y), int(x)), temps[k][1])
        if best is None:
            continue
        ncc, a, b, s, (y, x), t = best
        block = _block_score(t, fine[b][y : y + patch, x : x + patch], cfg.blocks)
        # Content of size L in image a (original pixels) has size L * s_orig in image b.
        s_orig = s * factor[a] / factor[b]
        pair = DuplicatePair(
            i, j, round(block, 4), round(ncc, 4), round(s_orig if a == i else 1.0 / s_orig, 4), "near"
        )
        verified.append(pair)
        if ncc >= cfg.min_ncc and block >= cfg.threshold and (i, j) not in pairs:
            pairs[(i, j)] = pair
    if progress:
        progress(f"verified {len(cand)} candidate pairs")
    return sorted(pairs.values(), key=lambda p: (p.i, p.j)), verified


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def find_duplicates(
    paths: Sequence[str | Path],
    config: DedupConfig | None = None,
    loader: Callable[[Path], np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
) -> DedupResult:
    """Group image files that are exact or near copies of one another.

    Args:
        paths: image files.
        config: detector parameters.
        loader: returns a 2D grey array for a path; defaults to
            :func:`breastai.data.readers.load_image`.
        progress: optional callback receiving short status lines.

    Returns:
        Groups (an index per path) and the pairs that joined them.
    """
    if loader is None:
        from breastai.data.readers.registry import load_image

        def loader(p: Path) -> np.ndarray:
            return load_image(p)[0]

    cfg = config or DedupConfig()
    ps = [Path(p) for p in paths]
    images, digests, factors = [], [], []
    for p in ps:
        arr = np.asarray(loader(p), dtype=np.float32)
        digests.append([_file_digest(p), _pixel_digest(arr)])
        # Keep only what the finer stage needs (twice its canonical area) to bound memory.
        f = min(1.0, 2 * cfg.fine_side / float(np.sqrt(arr.shape[0] * arr.shape[1])))
        if f < 1.0:
            arr = _resize(arr, (round(arr.shape[0] * f), round(arr.shape[1] * f)))
        images.append(arr)
        factors.append(f)

    def original(pair: DuplicatePair) -> DuplicatePair:
        return replace(pair, scale=round(pair.scale * factors[pair.i] / factors[pair.j], 4))

    pairs, candidates = find_duplicate_pairs(images, cfg, digests=digests, progress=progress)
    pairs = [p if p.kind == "exact" else original(p) for p in pairs]
    candidates = [original(p) for p in candidates]
    groups = union_find_groups(len(ps), [(p.i, p.j) for p in pairs])
    return DedupResult(groups=groups, pairs=pairs, candidates=candidates)
