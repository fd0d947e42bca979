"""Duplicate detection on synthetic textures: crops and rescales found, unrelated images not."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from breastai.data.dedup import (
    DedupConfig,
    find_duplicate_pairs,
    find_duplicates,
    ncc_match,
    union_find_groups,
)


def _texture(seed: int, shape: tuple[int, int] = (300, 360)) -> np.ndarray:
    """Speckle-like texture with some larger blobs, in 0..255."""
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.normal(size=shape), 1.5) + 0.5 * gaussian_filter(rng.normal(size=shape), 8) * 8
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.float32)


def _crop_rescale(img: np.ndarray, box: tuple[int, int, int, int], scale: float) -> np.ndarray:
    y0, x0, y1, x1 = box
    crop = img[y0:y1, x0:x1]
    h, w = round(crop.shape[0] * scale), round(crop.shape[1] * scale)
    return np.asarray(Image.fromarray(crop, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)


def test_union_find():
    assert union_find_groups(6, [(4, 1), (1, 3), (5, 0)]) == [0, 1, 2, 1, 1, 0]
    assert union_find_groups(3, []) == [0, 1, 2]


def test_ncc_match_finds_exact_patch():
    img = _texture(0, (80, 90))
    t = img[20:52, 30:62] - img[20:52, 30:62].mean()
    t /= np.sqrt((t * t).sum())
    assert ncc_match(t, img) == pytest.approx(1.0, abs=1e-3)
    assert ncc_match(t, _texture(1, (80, 90))) < 0.6
    assert ncc_match(t, img[:20, :20]) == 0.0  # does not fit


def test_crop_and_rescale_detected_unrelated_not():
    base = _texture(0)
    images = [
        base,
        _crop_rescale(base, (30, 20, 280, 330), 0.8),  # cropped and shrunk
        _crop_rescale(base, (0, 40, 260, 360), 1.2),  # cropped and enlarged
        _texture(1),
        _texture(2, (280, 300)),
        base + np.random.default_rng(5).normal(0, 4, base.shape).astype(np.float32),  # noisy copy
    ]
    pairs, candidates = find_duplicate_pairs(images, DedupConfig())
    joined = {(p.i, p.j) for p in pairs}
    assert {(0, 1), (0, 2), (0, 5)} <= joined
    assert not any(3 in pr or 4 in pr for pr in joined)
    scale01 = next(p.scale for p in pairs if (p.i, p.j) == (0, 1))
    assert scale01 == pytest.approx(0.8, rel=0.05)
    groups = union_find_groups(len(images), sorted(joined))
    assert groups[0] == groups[1] == groups[2] == groups[5]
    assert len({groups[0], groups[3], groups[4]}) == 3
    # Unrelated pairs never reach verification; forced through it, they score low.
    assert not [c for c in candidates if {c.i, c.j} & {3, 4}]
    _, forced = find_duplicate_pairs(images, DedupConfig(coarse_threshold=-1.0, shortlist=5))
    unrelated = [c.score for c in forced if {c.i, c.j} & {3, 4}]
    assert len(unrelated) == 9 and max(unrelated) < 0.2


def test_exact_copies_by_pixels_and_digest(tmp_path):
    a = _texture(3, (64, 64))
    b = _texture(4, (64, 64))
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "a.png")
    # Same pixels, other bytes (no compression): still an exact copy.
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "a_pixels.png", compress_level=0)
    (tmp_path / "a_bytes.png").write_bytes((tmp_path / "a.png").read_bytes())
    Image.fromarray(b.astype(np.uint8)).save(tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "a_pixels.png").read_bytes()
    names = ["a.png", "b.png", "a_pixels.png", "a_bytes.png"]
    res = find_duplicates([tmp_path / n for n in names])
    assert [(p.i, p.j) for p in res.pairs if p.kind == "exact"] == [(0, 2), (0, 3)]
    assert all(p.score > 0.99 for p in res.pairs)  # 2-3 is also found by matching
    assert res.groups == [0, 1, 0, 0]
    assert res.duplicate_groups() == [[0, 2, 3]]


def test_bad_input():
    with pytest.raises(ValueError, match="image 1: expected a 2D image"):
        find_duplicate_pairs([np.zeros((8, 8)), np.zeros((8, 8, 3))])
