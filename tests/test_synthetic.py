"""Tests for the synthetic demo dataset (breastai.data.synthetic)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import ConvexHull

from breastai.data.datalist import read_datalist
from breastai.data.synthetic import CLASSES, make_demo_dataset, make_lesion


def solidity(mask: np.ndarray) -> float:
    """Area over convex-hull area, both counted on pixel squares (1.0 for a convex blob)."""
    ys, xs = np.nonzero(mask)
    pts = np.c_[xs, ys].astype(float)
    corners = np.concatenate([pts, pts + [1, 0], pts + [0, 1], pts + [1, 1]])
    return float(mask.sum() / ConvexHull(corners).volume)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    t0 = time.process_time()
    path = make_demo_dataset(out, n_per_class=60, size=128, seed=0)
    cpu = time.process_time() - t0
    return out, path, cpu


def test_make_lesion_deterministic_and_shapes():
    a_img, a_mask = make_lesion("malignant", 96, np.random.default_rng(7))
    b_img, b_mask = make_lesion("malignant", 96, 7)  # an int seed means the same generator
    assert a_img.dtype == np.uint8 and a_img.shape == (96, 96)
    assert a_mask.dtype == bool and a_mask.shape == (96, 96)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = make_lesion("malignant", 96, 8)
    assert not np.array_equal(a_img, c_img)


def test_make_lesion_rejects_bad_input():
    with pytest.raises(ValueError, match="label"):
        make_lesion("normal", 64, 0)
    with pytest.raises(ValueError, match="size"):
        make_lesion("benign", 16, 0)


@pytest.mark.parametrize("label", CLASSES)
def test_masks_nonempty_inside_and_lesion_is_dark(label):
    rng = np.random.default_rng(3)
    for _ in range(25):
        img, mask = make_lesion(label, 128, rng)
        assert mask.sum() > 30
        # The whole lesion, spicules included, lies inside the image with a margin.
        ys, xs = np.nonzero(mask)
        assert ys.min() >= 2 and xs.min() >= 2 and ys.max() <= 125 and xs.max() <= 125
        # Hypoechoic: the lesion is darker than a ring of tissue around it, on average.
        from scipy.ndimage import binary_dilation

        ring = binary_dilation(mask, iterations=8) & ~binary_dilation(mask, iterations=3)
        assert img[mask].mean() < img[ring].mean()


def test_shape_and_orientation_differ_between_classes():
    rng = np.random.default_rng(11)
    sol: dict[str, list[float]] = defaultdict(list)
    hw: dict[str, list[float]] = defaultdict(list)
    for label in CLASSES:
        for _ in range(30):
            _, mask = make_lesion(label, 128, rng)
            sol[label].append(solidity(mask))
            ys, xs = np.nonzero(mask)
            hw[label].append((np.ptp(ys) + 1) / (np.ptp(xs) + 1))
    # Benign: smooth, convex, wider than tall; malignant: irregular, taller.
    assert np.mean(sol["benign"]) > np.mean(sol["malignant"]) + 0.1
    assert np.mean(sol["benign"]) > 0.85
    assert np.median(hw["benign"]) < 1.0 < np.median(hw["malignant"]) + 0.2
    assert np.median(hw["benign"]) < np.median(hw["malignant"])
    # Overlap: classes are not perfectly separable by solidity alone.
    assert max(sol["malignant"]) > min(sol["benign"])


def test_posterior_features():
    """Enhancement below benign lesions, shadowing below malignant ones, on average."""
    rng = np.random.default_rng(5)
    diffs: dict[str, list[float]] = defaultdict(list)
    for label in CLASSES:
        for _ in range(30):
            img, mask = make_lesion(label, 128, rng)
            ys, xs = np.nonzero(mask)
            band = img[ys.max() + 3 : ys.max() + 30].astype(float)
            if band.shape[0] < 5:
                continue
            cols = np.zeros(128, bool)
            cols[np.unique(xs)] = True
            diffs[label].append(band[:, cols].mean() - band[:, ~cols].mean())
    assert np.mean(diffs["benign"]) > 0 > np.mean(diffs["malignant"])


def test_demo_dataset_files_and_datalist(demo):
    out, path, _ = demo
    assert path == out.resolve() / "datalist.csv"
    recs = read_datalist(path, classes=list(CLASSES))
    assert len(recs) == 120
    assert Counter(r["label"] for r in recs) == {"benign": 60, "malignant": 60}
    header = path.read_text().splitlines()[0].split(",")
    assert header[:5] == ["case_id", "image", "mask", "label", "group"]
    # Paths are stored relative so the folder can move.
    assert path.read_text().splitlines()[1].split(",")[1].startswith("images/")
    for r in recs[:20]:
        im = Image.open(r["image"])
        assert im.mode == "L" and im.size == (128, 128)
        (mpath,) = r["mask"]
        m = np.asarray(Image.open(mpath))
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 255}
    # No stray temporary files from the atomic writes.
    assert not list(out.rglob("*.tmp"))


def test_demo_groups(demo):
    _, path, _ = demo
    recs = read_datalist(path)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_group[r["group"]].append(r)
    multi = [g for g in by_group.values() if len(g) > 1]
    assert 5 <= len(multi) <= 25
    for g in multi:
        assert len(g) == 2
        assert len({r["label"] for r in g}) == 1  # two views of one lesion
        assert sorted(r["view"] for r in g) == ["0", "1"]


def test_demo_deterministic(demo, tmp_path):
    out, path, _ = demo
    again = make_demo_dataset(tmp_path / "again", n_per_class=60, size=128, seed=0)
    assert again.read_text() == path.read_text()
    for name in ("images/case0000.png", "masks/case0000.png", "images/case0119.png"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    other = make_demo_dataset(tmp_path / "other", n_per_class=5, size=64, seed=1)
    assert len(read_datalist(other)) == 10


def test_demo_is_fast(demo):
    # CPU time rather than wall time: the test machine may be shared.
    _, _, cpu = demo
    assert cpu < 3.0, f"120 images took {cpu:.2f} s of CPU"


def test_demo_rejects_bad_count(tmp_path):
    with pytest.raises(ValueError, match="n_per_class"):
        make_demo_dataset(tmp_path, n_per_class=0)
