"""Synthetic breast-ultrasound-like lesions for ``breastai demo`` and for tests.

Nothing is downloaded: :func:`make_demo_dataset` renders a small labelled dataset and
writes it to disk as ordinary PNG files plus a datalist, so the demo exercises exactly
the code path a user's own data takes.

How an image is made (a deliberately simple B-mode model, not a physical simulation):

1. A reflectivity map of layered tissue: bright skin line, darker subcutaneous fat,
   brighter fibroglandular tissue with horizontal streaks (Cooper's ligaments) and a
   chest-wall layer; layer boundaries undulate.
2. A hypoechoic lesion replaces the tissue inside its outline. The outline is a polar
   curve ``r(theta)`` built from random low-order harmonics (lobulation), high-order
   harmonics (angular margin) and narrow spicules.
3. Posterior acoustic features: the columns beneath the lesion are multiplied by a
   factor > 1 (enhancement) or < 1 (shadowing).
4. Fully developed speckle (multiplicative Rayleigh envelope of a smoothed complex
   Gaussian field), depth attenuation with partial gain compensation, log compression.
5. Burnt-in calipers, a depth ruler and text-like blocks, with the same probability in
   both classes so they carry no label information (unlike some real datasets).

Each lesion has a latent "suspiciousness" ``s`` in [0, 1] drawn from overlapping Beta
distributions per class (benign mean ~0.3, malignant mean ~0.7); margin irregularity,
spicules, orientation (taller-than-wide) and posterior shadowing all grow with ``s`` plus
independent noise. The classes therefore overlap: the task is learnable but a few
benign lesions look suspicious and a few cancers look benign, as in practice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from breastai.core.files import atomic_write
from breastai.core.keys import Keys
from breastai.data.datalist import write_datalist

__all__ = ["CLASSES", "LesionParams", "make_lesion", "make_demo_dataset", "sample_lesion_params", "render_lesion"]

CLASSES = ("benign", "malignant")

# Probability that a lesion gets a second "view" (same lesion, new scan) sharing its group.
_SECOND_VIEW_P = 0.2
# Overlays are drawn with the same probabilities in both classes: not a shortcut.
_CALIPER_P = 0.4
_TEXT_P = 0.5
_RULER_P = 0.3


@dataclass
class LesionParams:
    """Everything that defines one lesion; a second view perturbs pose and size only.

    Lengths are fractions of the image side so the same lesion renders at any size.
    """

    label: str
    s: float  # latent suspiciousness in [0, 1]
    cx: float
    cy: float
    r0: float  # mean radius
    aspect: float  # height / width; > 1 is taller-than-wide (non-parallel orientation)
    rot: float  # radians
    harm_k: np.ndarray = field(repr=False)
    harm_a: np.ndarray = field(repr=False)
    harm_phi: np.ndarray = field(repr=False)
    spic_theta: np.ndarray = field(repr=False)
    spic_len: np.ndarray = field(repr=False)  # relative to r0
    spic_width: np.ndarray = field(repr=False)  # radians
    contrast: float  # lesion reflectivity relative to tissue (0 = anechoic)
    heterogeneity: float  # internal echo texture amplitude
    edge_blur: float  # margin sharpness, pixels at 128 px
    halo: float  # echogenic rim strength (malignant sign)
    posterior: float  # log factor below the lesion: > 0 enhancement, < 0 shadowing

    def max_extent(self) -> float:
        """Upper bound of the lesion radius in any direction (fraction of image side)."""
        r = self.r0 * (1.0 + np.abs(self.harm_a).sum() + (self.spic_len.max() if self.spic_len.size else 0.0))
        return float(r * np.sqrt(max(self.aspect, 1.0 / self.aspect)))


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sample_lesion_params(label: str, rng: np.random.Generator | int | None = None) -> LesionParams:
    """Draw the shape and appearance of one lesion of class ``label``.

    Args:
        label: ``"benign"`` or ``"malignant"``.
        rng: generator or seed.

    Returns:
        The lesion parameters (position not yet checked against the image border;
        :func:`render_lesion` does that).
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    rng = _as_rng(rng)
    mal = label == "malignant"
    s = float(rng.beta(5.5, 2.0) if mal else rng.beta(2.0, 5.5))

    # Lobulation (k = 2..4) is common to both; fine margin roughness (k = 5..14) grows with s.
    k = np.arange(2, 15)
    amp_scale = np.where(k <= 4, 0.03 + 0.04 * rng.random(), (0.005 + 0.09 * s**1.5) * (4.0 / k) ** 0.7)
    harm_a = amp_scale * rng.rayleigh(1.0, k.size) / 1.25
    harm_phi = rng.uniform(0, 2 * np.pi, k.size)

    cystic = (not mal) and rng.random() < 0.25  # simple cyst: anechoic, smooth, enhancing
    n_spic = int(rng.poisson(max(0.0, 10.0 * (s - 0.35)) ** 1.2)) if s > 0.35 and not cystic else 0
    n_spic = min(n_spic, 14)
    spic_theta = rng.uniform(0, 2 * np.pi, n_spic)
    spic_len = rng.uniform(0.25, 0.8, n_spic) * (0.5 + s)
    spic_width = rng.uniform(0.04, 0.09, n_spic)

    # Benign lesions are usually wider than tall (parallel to the skin); cancers tend to
    # grow across tissue planes (taller-than-wide).
    aspect = float(np.exp(rng.normal(np.log(0.55) + 1.0 * s, 0.15)))
    contrast = 0.03 if cystic else float(np.clip(rng.normal(0.24 - 0.12 * s, 0.06), 0.05, 0.45))
    posterior = float(rng.normal(1.2 - 2.8 * s, 0.35)) + (0.3 if cystic else 0.0)
    return LesionParams(
        label=label,
        s=s,
        cx=float(rng.uniform(0.3, 0.7)),
        cy=float(rng.uniform(0.3, 0.52)),
        r0=float(rng.uniform(0.09, 0.21)),
        aspect=aspect,
        rot=float(rng.normal(0.0, 0.25)),
        harm_k=k,
        harm_a=harm_a,
        harm_phi=harm_phi,
        spic_theta=spic_theta,
        spic_len=spic_len,
        spic_width=spic_width,
        contrast=contrast,
        heterogeneity=0.0 if cystic else float(0.15 + 0.5 * s * rng.random()),
        edge_blur=float(0.5 + 1.6 * s * rng.random()),
        halo=float(max(0.0, rng.normal(1.1 * s - 0.45, 0.2))),
        posterior=posterior,
    )


def _second_view(p: LesionParams, rng: np.random.Generator) -> LesionParams:
    """The same lesion scanned again: new pose, probe pressure and position."""
    return replace(
        p,
        cx=float(np.clip(p.cx + rng.normal(0, 0.08), 0.3, 0.7)),
        cy=float(np.clip(p.cy + rng.normal(0, 0.04), 0.3, 0.52)),
        r0=p.r0 * float(rng.uniform(0.88, 1.12)),
        aspect=p.aspect * float(np.exp(rng.normal(0, 0.12))),
        rot=p.rot + float(rng.normal(0, 0.3)),
        harm_phi=p.harm_phi + float(rng.uniform(0, 2 * np.pi)) * p.harm_k,  # rotated outline
        spic_theta=p.spic_theta + float(rng.uniform(0, 2 * np.pi)),
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise correlated over ``sigma`` (rows, cols).

    Broad fields are drawn on a coarse grid and interpolated up, which is much cheaper
    than a wide Gaussian filter and looks the same.
    """
    f = int(max(1, min(min(sigma) / 2.0, 8)))
    small = tuple(max(2, -(-n // f)) for n in shape)
    n = ndi.gaussian_filter(rng.standard_normal(small), [s_ / f for s_ in sigma], mode="wrap")
    if small != tuple(shape):
        n = ndi.zoom(n, [a / b for a, b in zip(shape, small)], order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]
    return (n - n.mean()) / (n.std() + 1e-9)


def _tissue(size: int, rng: np.random.Generator) -> np.ndarray:
    """Reflectivity of layered breast tissue, shape (size, size), about 1 in glandular tissue."""
    yy = np.arange(size, dtype=np.float64)[:, None] / size
    wave = lambda base, amp: base + amp * _smooth_noise(rng, (1, size), (0, size / 6))  # noqa: E731
    skin = wave(rng.uniform(0.025, 0.05), 0.005)
    fat_end = wave(rng.uniform(0.14, 0.3), 0.035)
    wall = wave(rng.uniform(0.8, 0.95), 0.03)

    # Subcutaneous fat: hypoechoic lobules separated by thin bright septa.
    lob = _smooth_noise(rng, (size, size), (size / 28, size / 14))
    fat = 0.3 * np.exp(0.35 * lob) * (1 + 1.2 * np.exp(-((lob - 0.8) / 0.12) ** 2))
    # Fibroglandular tissue: bright, with horizontal streaks and darker fat islands.
    streaks = np.exp(0.5 * _smooth_noise(rng, (size, size), (size / 120, size / 10)))
    islands = 1.0 / (1.0 + np.exp(-4.0 * (_smooth_noise(rng, (size, size), (size / 18, size / 8)) - 0.9)))
    gland_refl = (1.0 - 0.65 * islands) * streaks
    gland = 1.0 / (1.0 + np.exp(-(yy - fat_end) * size / 2.0))
    refl = fat * (1 - gland) + gland * gland_refl
    chest = 1.0 / (1.0 + np.exp(-(yy - wall) * size / 2.0))
    refl = refl * (1 - 0.7 * chest)
    refl += 2.5 * np.exp(-(((yy - skin) * size / 1.2) ** 2))
    return np.clip(refl, 0.03, None)


def _outline_radius(p: LesionParams, theta: np.ndarray, n_table: int = 1024) -> np.ndarray:
    """r(theta) in units of r0 (before the anisotropic stretch); any shape of ``theta``.

    Evaluated on a periodic table of angles and interpolated: per-pixel harmonics would
    dominate the rendering time.
    """
    t = np.linspace(-np.pi, np.pi, n_table, endpoint=False)
    r = 1.0 + (p.harm_a[:, None] * np.cos(p.harm_k[:, None] * t[None] + p.harm_phi[:, None])).sum(0)
    for t0, length, width in zip(p.spic_theta, p.spic_len, p.spic_width):
        d = np.angle(np.exp(1j * (t - t0)))  # wrapped angular distance
        r += length * np.exp(-0.5 * (d / width) ** 2)
    return np.interp(theta, t, r, period=2 * np.pi)


def _lesion_geometry(p: LesionParams, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed "radial depth" field rho / r(theta) and the boolean mask (field < 1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xx - p.cx * size, yy - p.cy * size
    c, s_ = np.cos(p.rot), np.sin(p.rot)
    u, v = c * dx + s_ * dy, -s_ * dx + c * dy
    # Area-preserving stretch: width r0/sqrt(aspect), height r0*sqrt(aspect).
    u, v = u * np.sqrt(p.aspect), v / np.sqrt(p.aspect)
    rho = np.hypot(u, v) / (p.r0 * size)
    rel = rho / _outline_radius(p, np.arctan2(v, u))
    return rel, rel < 1.0


def _speckle(size: int, rng: np.random.Generator, looks: int = 2) -> np.ndarray:
    """Speckle with laterally elongated grains, mean 1.

    Each look is a Rayleigh envelope; averaging a couple of them (spatial compounding, as
    modern scanners do) removes the salt-and-pepper look of a single Rayleigh field.
    """
    sig = (0.8 * size / 128, 1.7 * size / 128)
    env = np.zeros((size, size))
    for _ in range(looks):
        re = ndi.gaussian_filter(rng.standard_normal((size, size)), sig)
        im = ndi.gaussian_filter(rng.standard_normal((size, size)), sig)
        env += np.hypot(re, im)
    return env / env.mean()


def _draw_plus(img: np.ndarray, y: int, x: int, half: int, value: int) -> None:
    h, w = img.shape
    img[max(0, y - half) : min(h, y + half + 1), min(max(x, 0), w - 1)] = value
    img[min(max(y, 0), h - 1), max(0, x - half) : min(w, x + half + 1)] = value


def _overlays(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Burn calipers, a depth ruler and text-like blocks into ``img`` (in place)."""
    size = img.shape[0]
    half = max(2, size // 40)
    if rng.random() < _CALIPER_P:
        ys, xs = np.nonzero(mask)
        if rng.random() < 0.5:  # width calipers at the lateral extremes
            pts = [(ys[xs.argmin()], xs.min() - 2), (ys[xs.argmax()], xs.max() + 2)]
        else:  # depth calipers at the top and bottom
            pts = [(ys.min() - 2, xs[ys.argmin()]), (ys.max() + 2, xs[ys.argmax()])]
        pts = [(int(y + rng.integers(-2, 3)), int(x + rng.integers(-2, 3))) for y, x in pts]
        for y, x in pts:
            _draw_plus(img, y, x, half, 235)
        if rng.random() < 0.5:  # dotted measurement line
            (y0, x0), (y1, x1) = pts
            n = max(abs(y1 - y0), abs(x1 - x0))
            for t in np.linspace(0, 1, n + 1)[2:-2:3]:
                img[int(round(y0 + t * (y1 - y0))), int(round(x0 + t * (x1 - x0)))] = 220
    if rng.random() < _RULER_P:  # depth scale ticks on the right edge
        x = size - 3
        for y in range(size // 16, size, size // 16):
            img[y, x - (2 if (y // (size // 16)) % 2 else 1) : x + 1] = 200
    if rng.random() < _TEXT_P:  # rows of glyph-like 3x5 blocks in a corner
        lines = int(rng.integers(1, 4))
        chars = int(rng.integers(3, 9))
        top = int(rng.integers(1, 4)) if rng.random() < 0.7 else size - 7 * lines - 2
        left = 2 if rng.random() < 0.6 else size - 4 * chars - 3
        for ln in range(lines):
            for ch in range(chars):
                glyph = rng.random((5, 3)) < 0.55
                y0, x0 = top + 7 * ln, left + 4 * ch
                region = img[y0 : y0 + 5, x0 : x0 + 3]
                region[glyph[: region.shape[0], : region.shape[1]]] = 210


def render_lesion(p: LesionParams, size: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one lesion into a fresh tissue background.

    Args:
        p: lesion parameters (from :func:`sample_lesion_params`); moved or shrunk if needed
            so that the whole lesion lies inside the image with a margin.
        size: side of the square image in pixels (>= 32).
        rng: generator or seed for the background, speckle and overlays.

    Returns:
        ``(image, mask)``: uint8 (size, size) grey image and bool mask of the lesion.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    rng = _as_rng(rng)
    scale = size / 128.0
    # Keep the lesion (spicules included) inside the image, leaving room for the posterior region.
    ext = p.max_extent()
    if ext > 0.3:
        p = replace(p, r0=p.r0 * 0.3 / ext)
        ext = 0.3
    margin = ext + 4.0 / size
    p = replace(p, cx=float(np.clip(p.cx, margin, 1 - margin)), cy=float(np.clip(p.cy, margin, 1 - margin)))

    refl = _tissue(size, rng)
    rel, mask = _lesion_geometry(p, size)
    if not mask.any():  # numerically tiny lesion: fall back to its centre pixel
        mask[int(p.cy * size), int(p.cx * size)] = True

    # Soft margin: blur of the indicator; sharper for circumscribed lesions.
    soft = ndi.gaussian_filter(mask.astype(np.float64), p.edge_blur * scale)
    inner = p.contrast * np.exp(p.heterogeneity * _smooth_noise(rng, (size, size), (2 * scale, 2 * scale)))
    halo_band = np.exp(-(((rel - 1.12) / 0.1) ** 2)) * (1 - soft)
    tissue_here = refl * (1 + p.halo * 0.8 * halo_band)
    refl = tissue_here * (1 - soft) + inner * soft

    # Posterior acoustic features in the columns the lesion occupies.
    cols = mask.any(0)
    if cols.any():
        bottom = np.where(cols, size - 1 - np.argmax(mask[::-1], axis=0), 0)
        width = np.clip(ndi.gaussian_filter1d(cols.astype(np.float64), 1.5 * scale), 0, 1)
        # A shadow is slightly narrower than the lesion, enhancement roughly as wide.
        if p.posterior < 0:
            width = width ** 2
        bottom_s = ndi.grey_dilation(bottom, size=max(3, int(4 * scale))).astype(np.float64)
        yy = np.arange(size, dtype=np.float64)[:, None]
        below = 1.0 / (1.0 + np.exp(-(yy - bottom_s[None]) / (1.5 * scale)))
        fade = np.exp(-np.clip(yy - bottom_s[None], 0, None) / (0.6 * size))
        refl = refl * np.exp(p.posterior * below * fade * width[None])

    # Depth attenuation that the time-gain compensation only partly corrects.
    depth = np.arange(size, dtype=np.float64)[:, None] / size
    atten = np.exp(-rng.uniform(0.4, 1.2) * depth)
    env = refl * atten * _speckle(size, rng)

    # Log compression into 8 bits with a random gain and dynamic range.
    db = 20 * np.log10(env + 1e-6)
    dyn = rng.uniform(40, 52)
    gain = rng.normal(0.0, 1.5)
    grey = (db + gain + 0.62 * dyn) / dyn
    img = np.clip(np.rint(grey * 255), 0, 255).astype(np.uint8)
    _overlays(img, mask, rng)
    return img, mask


def make_lesion(label: str, size: int = 128, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic ultrasound image with a lesion of class ``label``.

    Args:
        label: ``"benign"`` or ``"malignant"``.
        size: square image side in pixels.
        rng: generator or seed; the same seed gives the same image.

    Returns:
        ``(image, mask)``: uint8 grey image and bool lesion mask, both (size, size).
    """
    rng = _as_rng(rng)
    return render_lesion(sample_lesion_params(label, rng), size, rng)


def _save_png(arr: np.ndarray, path: Path) -> None:
    """Write an 8-bit grey PNG atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(tmp, format="PNG"))


def make_demo_dataset(out_dir: str | Path, n_per_class: int = 60, size: int = 128, seed: int = 0) -> Path:
    """Write a synthetic benign/malignant lesion dataset to ``out_dir``.

    Layout: ``images/caseNNNN.png`` (8-bit grey), ``masks/caseNNNN.png`` (0/255) and
    ``datalist.csv`` with columns case_id, image, mask, label, group (plus ``view``).
    About one lesion in five is imaged twice ("views"); both images share a ``group``
    so that group-aware splitting keeps them on the same side. Case ids are shuffled
    so they carry no label information.

    Args:
        out_dir: output folder (created; existing files of the same name are replaced).
        n_per_class: images per class.
        size: image side in pixels.
        seed: everything is deterministic given the seed.

    Returns:
        Path of the datalist CSV.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    out = Path(out_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    items: list[tuple[str, int, int, np.ndarray, np.ndarray]] = []  # label, group, view, img, mask
    group = 0
    for label in CLASSES:
        count = 0
        while count < n_per_class:
            p = sample_lesion_params(label, rng)
            n_views = 2 if (rng.random() < _SECOND_VIEW_P and count + 2 <= n_per_class) else 1
            for view in range(n_views):
                img, mask = render_lesion(p if view == 0 else _second_view(p, rng), size, rng)
                items.append((label, group, view, img, mask))
            count += n_views
            group += 1

    order = rng.permutation(len(items))
    rows = []
    for k, idx in enumerate(order):
        label, grp, view, img, mask = items[idx]
        cid = f"case{k:04d}"
        img_path, mask_path = out / "images" / f"{cid}.png", out / "masks" / f"{cid}.png"
        _save_png(img, img_path)
        _save_png(mask.astype(np.uint8) * 255, mask_path)
        rows.append(
            {Keys.CASE_ID: cid, Keys.IMAGE: str(img_path), Keys.MASK: str(mask_path), Keys.LABEL: label,
             Keys.GROUP: f"lesion{grp:04d}", "view": view}
        )
    rows.sort(key=lambda r: r[Keys.CASE_ID])
    return write_datalist(rows, out / "datalist.csv")
