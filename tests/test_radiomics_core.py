"""IBSI golden values on the digital phantom and known-answer tests of the core families."""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from breastai.radiomics import (
    NOT_IMPLEMENTED,
    RadiomicsInputError,
    discretise,
    extract_features,
    feature_docs,
    resegment,
)
from breastai.radiomics.intensity import histogram_features
from breastai.radiomics.morphology import autocorrelation, ellipsoid_area

DATA = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
PHANTOM = DATA / "ibsi" / "phantom"
REFERENCE = DATA / "ibsi" / "reference" / "ibsi_1_reference_values_digital_phantom.csv"
MY_FAMILIES = {"Morphology", "Local intensity", "Statistics", "Intensity histogram", "Intensity volume histogram"}
CORE = ["morphology", "statistics", "histogram", "ivh", "local", "autocorrelation"]


def _reference_rows() -> list[dict[str, str]]:
    if not REFERENCE.is_file():
        return []
    with open(REFERENCE, encoding="utf-8-sig", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["family"] in MY_FAMILIES]


REF_ROWS = _reference_rows()
WITH_VALUE = [r for r in REF_ROWS if r["reference value"].strip()]


@pytest.fixture(scope="module")
def phantom() -> dict[str, float]:
    if not (PHANTOM / "image.nii.gz").is_file() or not REFERENCE.is_file():
        pytest.skip(f"IBSI phantom not found under {DATA} (set BREASTAI_DATA)")
    nib = pytest.importorskip("nibabel")
    img = nib.load(str(PHANTOM / "image.nii.gz"))
    msk = nib.load(str(PHANTOM / "mask.nii.gz"))
    # NIfTI stores (x, y, z); the engine wants (z, y, x) with matching spacing.
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])[::-1]
    image = np.asarray(img.dataobj).astype(np.float64).transpose(2, 1, 0)
    mask = np.asarray(msk.dataobj).transpose(2, 1, 0) > 0
    table = extract_features([image], [mask], spacing=spacing, discretisation="none", families=CORE)
    return table.row(0)


def _significant_digits(text: str) -> int:
    digits = re.sub(r"[^0-9]", "", text.split("e")[0].split("E")[0]).lstrip("0")
    return max(len(digits), 1)


@pytest.mark.parametrize("row", WITH_VALUE, ids=[r["tag"] for r in WITH_VALUE])
def test_phantom_reference_value(phantom: dict[str, float], row: dict[str, str]) -> None:
    """Tolerance > 0: |value - reference| <= tolerance. Tolerance 0 (or empty): the value rounded
    to the number of significant digits shown in the reference equals the reference."""
    tag, ref = row["tag"], float(row["reference value"])
    assert tag in phantom, f"{tag} not computed"
    value = phantom[tag]
    tol = float(row["tolerance"] or 0)
    if tol > 0:
        assert abs(value - ref) <= tol, f"{tag}: {value} vs {ref} +- {tol}"
    else:
        digits = _significant_digits(row["reference value"].strip())
        assert float(f"{value:.{digits}g}") == pytest.approx(ref, abs=1e-12), f"{tag}: {value} vs {ref}"


def test_not_implemented_list_is_exact(phantom: dict[str, float]) -> None:
    missing = {r["tag"] for r in REF_ROWS} - set(phantom)
    assert missing == set(NOT_IMPLEMENTED) == {
        "morph_vol_dens_ombb", "morph_area_dens_ombb", "morph_vol_dens_mvee", "morph_area_dens_mvee"}
    assert len(WITH_VALUE) == 74  # 25 morphology + 2 local + 18 stat + 23 ih + 6 ivh


def test_every_feature_documented_with_ibsi_id(phantom: dict[str, float]) -> None:
    docs = feature_docs()
    for tag in phantom:
        assert tag in docs, tag
        assert re.search(r"\([0-9A-Z]{4}[;):]", docs[tag]) or re.search(r"analogue of [0-9A-Z]{4}", docs[tag]), tag


# --- synthetic 2D shapes ------------------------------------------------------------------------

def _ellipse(h: int, w: int, a: float, b: float, cy: float | None = None, cx: float | None = None) -> np.ndarray:
    cy = h / 2 - 0.5 if cy is None else cy
    cx = w / 2 - 0.5 if cx is None else cx
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / b) ** 2 + ((xx - cx) / a) ** 2 <= 1


def _texture(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(100, 20, shape) + np.linspace(0, 30, shape[-1]))


def _run(images, masks, **kw):
    kw.setdefault("families", CORE)
    return extract_features(images, masks, **kw)


def test_disc_known_answers() -> None:
    r = 40
    m = _ellipse(101, 101, r, r)
    row = _run([_texture(m.shape)], [m]).row(0)
    assert row["morph2d_area_approx"] == pytest.approx(math.pi * r * r, rel=0.01)
    assert row["morph2d_area"] == pytest.approx(math.pi * r * r, rel=0.01)
    # The marching-squares polygon follows the pixel staircase: it overestimates a smooth circle's
    # perimeter by about 6% (45-degree chamfers instead of arcs), never underestimates it.
    assert 1.0 <= row["morph2d_perimeter"] / (2 * math.pi * r) < 1.08
    assert 0.85 < row["morph2d_circularity"] <= 1.0
    assert row["morph2d_pca_elongation"] == pytest.approx(1.0, abs=0.01)
    assert row["morph2d_diam"] == pytest.approx(2 * r, rel=0.02)
    assert row["morph2d_solidity"] == pytest.approx(1.0, abs=0.02)


def test_square_exact() -> None:
    n = 20
    m = np.zeros((30, 30), bool)
    m[5 : 5 + n, 5 : 5 + n] = True
    row = _run([_texture(m.shape)], [m]).row(0)
    assert row["morph2d_area_approx"] == n * n
    # marching squares cuts each of the 4 corners by a 1/8-pixel triangle
    assert row["morph2d_area"] == pytest.approx(n * n - 0.5)
    assert row["morph2d_perimeter"] == pytest.approx(4 * (n - 1) + 2 * math.sqrt(2))
    N = n * n
    var = (n * n - 1) / 12 * N / (N - 1)  # unbiased variance of one coordinate
    assert row["morph2d_pca_maj_axis"] == pytest.approx(4 * math.sqrt(var))
    assert row["morph2d_pca_min_axis"] == pytest.approx(4 * math.sqrt(var))
    assert row["morph2d_diam"] == pytest.approx(math.hypot(n, n - 1))
    assert row["morph2d_solidity"] == pytest.approx(1.0)


def test_ellipse_axes_and_spacing() -> None:
    a, b = 60, 30
    m = _ellipse(80, 140, a, b)
    t1 = _run([_texture(m.shape)], [m], families=["morphology"]).row(0)
    assert t1["morph2d_pca_maj_axis"] == pytest.approx(2 * a, rel=0.02)
    assert t1["morph2d_pca_min_axis"] == pytest.approx(2 * b, rel=0.02)
    assert t1["morph2d_pca_elongation"] == pytest.approx(b / a, rel=0.02)
    assert t1["morph2d_area_dens_aee"] == pytest.approx(1.0, rel=0.02)
    t2 = _run([_texture(m.shape)], [m], families=["morphology"], spacing=(0.5, 0.5)).row(0)
    assert t2["morph2d_area"] == pytest.approx(t1["morph2d_area"] / 4)
    assert t2["morph2d_perimeter"] == pytest.approx(t1["morph2d_perimeter"] / 2)
    assert t2["morph2d_circularity"] == pytest.approx(t1["morph2d_circularity"])


def test_rotation_by_90_degrees_is_invariant() -> None:
    m = _ellipse(70, 90, 35, 20, cy=30, cx=50) | _ellipse(70, 90, 10, 10, cy=50, cx=30)
    img = _texture(m.shape, seed=3)
    t = _run([img, np.rot90(img).copy()], [m, np.rot90(m).copy()])
    np.testing.assert_allclose(t.values[0], t.values[1], rtol=1e-9, atol=1e-9)


def test_intensity_scaling_changes_only_what_it_should() -> None:
    m = _ellipse(60, 80, 30, 20)
    img = _texture(m.shape, seed=1)
    t = _run([img, 3 * img], [m, m])
    a, b = t.row(0), t.row(1)
    scale1 = {"stat_mean", "stat_median", "stat_min", "stat_max", "stat_p10", "stat_p90", "stat_iqr", "stat_range",
              "stat_mad", "stat_rmad", "stat_medad", "stat_rms", "morph2d_integ_int", "loc_peak_loc", "loc_peak_glob"}
    for k in a:
        if k in scale1:
            assert b[k] == pytest.approx(3 * a[k], rel=1e-9), k
        elif k == "stat_var":
            assert b[k] == pytest.approx(9 * a[k], rel=1e-9)
        elif k == "stat_energy":
            assert b[k] == pytest.approx(9 * a[k], rel=1e-9)
        else:  # shape, FBN-discretised histogram/IVH, shape-of-distribution and autocorrelation
            assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-9), k


def test_batch_equals_single() -> None:
    rng = np.random.default_rng(5)
    imgs, masks = [], []
    for i in range(5):
        h, w = rng.integers(20, 70, 2)
        m = _ellipse(h, w, w / 3, h / 3)
        imgs.append(_texture((h, w), seed=i))
        masks.append(m)
    batch = _run(imgs, masks, batch_size=5)
    for i in range(5):
        single = _run([imgs[i]], [masks[i]])
        np.testing.assert_allclose(batch.values[i], single.values[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "mask, problem",
    [
        (np.zeros((10, 10), bool), "mask is empty"),
        (np.pad(np.ones((1, 1), bool), ((4, 5), (4, 5))), "single pixel"),
        (np.ones((9, 10), bool), "does not match image shape"),
    ],
)
def test_bad_masks_raise_clear_errors(mask: np.ndarray, problem: str) -> None:
    good = _ellipse(10, 10, 3, 3)
    with pytest.raises(RadiomicsInputError, match=rf"lesion 1 \(b\): .*{problem}"):
        extract_features([np.ones((10, 10)), np.ones((10, 10))], [good, mask], ids=["a", "b"], families=CORE)


def test_mixed_dimensions_rejected() -> None:
    with pytest.raises(RadiomicsInputError, match="mix 2D and 3D"):
        extract_features([np.ones((5, 5)), np.ones((3, 5, 5))], [np.ones((5, 5)), np.ones((3, 5, 5))])


# --- discretisation and helpers -------------------------------------------------------------------

def test_fixed_bin_number_and_size() -> None:
    x = torch.tensor([[[[0.0, 1.0, 2.5, 10.0, 99.0]]]], dtype=torch.float64)
    m = torch.tensor([[[[True, True, True, True, False]]]])
    d = discretise(x, m, "fbn", n_bins=4)
    assert d.levels[0, 0, 0].tolist() == [1, 1, 2, 4, 0]  # max -> Ng; outside mask -> 0
    d = discretise(x, m, "fbs", bin_width=2.0)
    assert d.levels[0, 0, 0].tolist() == [1, 1, 2, 6, 0]
    d = discretise(x, m, "fbs", bin_width=2.0, min_bound=-2.0)
    assert d.levels[0, 0, 0].tolist() == [2, 2, 3, 7, 0]
    assert resegment(x, m, 0.5, 5.0)[0, 0, 0].tolist() == [False, True, True, False, False]
    with pytest.raises(ValueError, match="bin_width"):
        discretise(x, m, "fbs")


def test_histogram_gradient_with_gaps() -> None:
    lv = torch.tensor([[[[1, 1, 1, 3, 4, 4]]]])
    m = torch.ones_like(lv, dtype=torch.bool)
    f = histogram_features(lv, m, torch.tensor([1.0]), torch.tensor([5.0]))
    # counts 3,0,1,2,0 -> gradients -3, -1, 1, -0.5, -2
    assert f["ih_max_grad"].item() == 1 and f["ih_max_grad_g"].item() == 3
    assert f["ih_min_grad"].item() == -3 and f["ih_min_grad_g"].item() == 1
    assert f["ih_mode"].item() == 1


def test_autocorrelation_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 1, 7, 9))
    m = rng.random((1, 1, 7, 9)) > 0.3
    sp = torch.tensor([[1.0, 0.7, 1.3]], dtype=torch.float64)
    moran, geary = autocorrelation(torch.tensor(x), torch.tensor(m), sp)
    pts = np.argwhere(m[0, 0]) * np.array([0.7, 1.3])
    v = x[0, 0][m[0, 0]]
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    w = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)
    c = v - v.mean()
    n = len(v)
    assert moran.item() == pytest.approx(n / w.sum() * (w * np.outer(c, c)).sum() / (c**2).sum(), rel=1e-9)
    g = (n - 1) * (w * (v[:, None] - v[None]) ** 2).sum() / (2 * w.sum() * (c**2).sum())
    assert geary.item() == pytest.approx(g, rel=1e-9)


def test_ellipsoid_area_series_and_3d_sphere() -> None:
    r = torch.tensor([3.0], dtype=torch.float64)
    assert ellipsoid_area(r, r, r).item() == pytest.approx(4 * math.pi * 9)
    pytest.importorskip("skimage")
    zz, yy, xx = np.mgrid[:25, :25, :25]
    m = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 100
    row = extract_features([_texture(m.shape)], [m], families=["morphology"]).row(0)
    assert row["morph_volume"] == pytest.approx(4 / 3 * math.pi * 1000, rel=0.03)
    assert row["morph_sphericity"] > 0.9
    assert row["morph_pca_flatness"] == pytest.approx(1.0, abs=0.01)
