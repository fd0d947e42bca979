"""Tests for the IBSI texture families in ``breastai.radiomics.texture``.

The golden test compares every texture reference value of the IBSI-1 digital phantom (tags starting
``cm_``, ``rlm_``, ``szm_``, ``dzm_``, ``ngt_``, ``ngl_``) with our result. The reference file lists a
tolerance of 0 for the phantom and gives values to 3 significant digits, so a zero tolerance is read
as "equal after rounding to 3 significant digits": ``|value - ref| <= 0.5 * 10**(floor(log10|ref|) - 2)``
(half a unit of the third significant digit). A reference of exactly 0 requires ``|value| <= 1e-9``.
"""

from __future__ import annotations

import csv
import math
import os
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from breastai.radiomics.texture import FAMILIES, IBSI_CODES
from breastai.radiomics.texture._common import parse_directional_aggregation, parse_zone_aggregation

DATA = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
PHANTOM = DATA / "ibsi" / "phantom"
REFERENCE = DATA / "ibsi" / "reference" / "ibsi_1_reference_values_digital_phantom.csv"
PREFIX_TO_FAMILY = {"cm": "glcm", "rlm": "glrlm", "szm": "glszm", "dzm": "gldzm", "ngt": "ngtdm", "ngl": "ngldm"}
SUFFIXES = ("_2D_avg", "_2D_comb", "_2_5D_avg", "_2_5D_comb", "_3D_avg", "_3D_comb", "_2D", "_2_5D", "_3D")


def _reference_rows() -> list:
    if not REFERENCE.is_file() or not PHANTOM.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"IBSI phantom data not found under {DATA}"))]
    rows = []
    with REFERENCE.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            prefix = row["tag"].split("_")[0]
            if prefix not in PREFIX_TO_FAMILY:
                continue
            marks = [] if row["reference value"].strip() else [pytest.mark.skip(reason="no reference value")]
            rows.append(pytest.param(row, id=row["tag"], marks=marks))
    return rows


def _split_tag(tag: str) -> tuple[str, str]:
    for suffix in SUFFIXES:
        if tag.endswith(suffix):
            return tag[: -len(suffix)], suffix[1:]
    raise AssertionError(f"unexpected reference tag {tag}")


@lru_cache(maxsize=None)
def _phantom() -> tuple[torch.Tensor, torch.Tensor]:
    nib = pytest.importorskip("nibabel")
    image = nib.load(str(PHANTOM / "image.nii.gz")).get_fdata()
    mask = nib.load(str(PHANTOM / "mask.nii.gz")).get_fdata()
    # NIfTI arrays are (x, y, z); IBSI 2D slices are axial, so the z axis becomes D.
    levels = torch.from_numpy(image.transpose(2, 1, 0).round()).to(torch.int64)[None]
    roi = torch.from_numpy(mask.transpose(2, 1, 0) > 0.5)[None]
    return levels, roi


@lru_cache(maxsize=None)
def _phantom_features(family: str, aggregation: str) -> dict[str, float]:
    levels, roi = _phantom()
    fn = FAMILIES[family][0]
    # The phantom is used without discretisation: its grey levels 1..6 are the levels.
    return {k: float(v[0]) for k, v in fn(levels, roi, 6, aggregation=aggregation).items()}


@pytest.mark.parametrize("row", _reference_rows())
def test_ibsi_digital_phantom_reference(row: dict) -> None:
    base, aggregation = _split_tag(row["tag"])
    family = PREFIX_TO_FAMILY[base.split("_")[0]]
    value = _phantom_features(family, aggregation)[base]
    ref = float(row["reference value"])
    tol = float(row["tolerance"] or 0)
    if tol == 0:
        tol = 1e-9 if ref == 0 else 0.5 * 10 ** (math.floor(math.log10(abs(ref))) - 2)
    assert abs(value - ref) <= tol * (1 + 1e-9), f"{row['tag']}: got {value}, reference {ref} +- {tol}"


# ----------------------------------------------------------------------------------------------
# Synthetic lesions: batching, rotation invariance, degenerate ROIs, input checking
# ----------------------------------------------------------------------------------------------


def _random_lesions(batch: int, depth: int, size: int, n_levels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, depth, size, size, generator=g)
    x = torch.nn.functional.avg_pool3d(x[:, None], 3, 1, 1)[:, 0] if depth > 2 else x
    levels = (x * n_levels).long().clamp(0, n_levels - 1) + 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for b in range(batch):
        r = 0.3 + 0.15 * b / max(batch - 1, 1)
        ell = ((yy - size / 2) / (r * size)) ** 2 + ((xx - size / 2 + b % 3) / (0.45 * size)) ** 2 <= 1
        m = ell[None].expand(depth, -1, -1).clone()
        if depth > 2:
            m[0, : size // 2] = False  # irregular in z as well
        masks.append(m)
    roi = torch.stack(masks)
    # Values outside the mask are arbitrary (and out of range) and must be ignored.
    levels = torch.where(roi, levels, torch.full_like(levels, 99))
    return levels, roi


ALL_CASES = [(name, agg) for name, (_, _, aggs) in FAMILIES.items() for agg in aggs]


@pytest.mark.parametrize("family,aggregation", ALL_CASES)
def test_batch_equals_single_lesion(family: str, aggregation: str) -> None:
    fn, features, _ = FAMILIES[family]
    depth = 3 if ("3d" in aggregation or "2.5d" in aggregation) else 1
    levels, roi = _random_lesions(4, depth, 14, 8, seed=1)
    batched = fn(levels, roi, 8, aggregation=aggregation)
    assert set(batched) == set(features)
    for b in range(levels.shape[0]):
        single = fn(levels[b : b + 1], roi[b : b + 1], 8, aggregation=aggregation)
        for tag in features:
            assert batched[tag].shape == (levels.shape[0],)
            torch.testing.assert_close(batched[tag][b : b + 1], single[tag], rtol=1e-10, atol=1e-12,
                                       equal_nan=True, msg=f"{tag} lesion {b}")


@pytest.mark.parametrize("family,aggregation", [c for c in ALL_CASES if not c[1].startswith(("3d", "2.5d"))])
def test_rotation_by_90_degrees_leaves_2d_features_unchanged(family: str, aggregation: str) -> None:
    fn, features, _ = FAMILIES[family]
    levels, roi = _random_lesions(3, 1, 16, 6, seed=2)
    ref = fn(levels, roi, 6, aggregation=aggregation)
    for k in (1, 2, 3):
        rot = fn(torch.rot90(levels, k, (2, 3)), torch.rot90(roi, k, (2, 3)), 6, aggregation=aggregation)
        for tag in features:
            torch.testing.assert_close(rot[tag], ref[tag], rtol=1e-10, atol=1e-12, msg=f"{tag} rot{k}")


# Features undefined for a single grey level (0/0): GLCM correlation and information correlation 1.
CONSTANT_NAN = {"cm_corr", "cm_info_corr1"}


@pytest.mark.parametrize("family,aggregation", ALL_CASES)
def test_constant_level_lesion_is_finite_or_documented_nan(family: str, aggregation: str) -> None:
    fn, features, _ = FAMILIES[family]
    depth = 3 if ("3d" in aggregation or "2.5d" in aggregation) else 1
    _, roi = _random_lesions(2, depth, 12, 4, seed=3)
    levels = torch.full(roi.shape, 3, dtype=torch.int64)
    out = fn(levels, roi, 4, aggregation=aggregation)
    for tag in features:
        finite = torch.isfinite(out[tag])
        assert bool(finite.all()) != (tag in CONSTANT_NAN), f"{tag}: {out[tag]}"
    if family == "ngtdm":
        assert torch.equal(out["ngt_coarseness"], torch.full((2,), 1e6, dtype=torch.float64))
        assert torch.equal(out["ngt_contrast"], torch.zeros(2, dtype=torch.float64))
    if family == "glszm":
        assert torch.equal(out["szm_glnu_norm"], torch.ones(2, dtype=torch.float64))


def test_empty_and_single_voxel_rois_do_not_disturb_the_batch() -> None:
    levels, roi = _random_lesions(3, 1, 12, 5, seed=4)
    roi[1] = False  # empty ROI
    roi[2] = False
    roi[2, 0, 5, 5] = True  # single voxel: no neighbours, no co-occurrences
    full = {name: fn(levels, roi, 5, aggregation=aggs[0]) for name, (fn, _, aggs) in FAMILIES.items()}
    for name, (fn, features, aggs) in FAMILIES.items():
        alone = fn(levels[:1], roi[:1], 5, aggregation=aggs[0])
        for tag in features:
            assert torch.isnan(full[name][tag][1]), f"{tag} of an empty ROI should be NaN"
            torch.testing.assert_close(full[name][tag][:1], alone[tag], rtol=1e-10, atol=1e-12)
    # A single voxel is one zone of size 1 at distance 1 with dependence 1.
    assert full["glszm"]["szm_sze"][2] == 1.0 and full["gldzm"]["dzm_sde"][2] == 1.0
    assert full["ngldm"]["ngl_lde"][2] == 1.0 and full["glrlm"]["rlm_r_perc"][2] == 1.0
    assert torch.isnan(full["glcm"]["cm_joint_max"][2]) and torch.isnan(full["ngtdm"]["ngt_coarseness"][2])


def test_hand_computed_2d_example() -> None:
    from breastai.radiomics.texture._common import prepare
    from breastai.radiomics.texture.glcm import glcm_matrices
    from breastai.radiomics.texture.glrlm import glrlm_matrices

    # 3x3 image, full ROI: rows [1 1 2], [1 2 2], [3 3 3].
    img = torch.tensor([[1, 1, 2], [1, 2, 2], [3, 3, 3]])[None, None]
    roi = torch.ones_like(img, dtype=torch.bool)
    lv = prepare(img, roi, 3)
    # Horizontal pairs (1,1),(1,2),(1,2),(2,2),(3,3),(3,3), counted in both directions.
    horiz = glcm_matrices(lv, 3, three_d=False)[0, 0, 0]
    expected = torch.tensor([[2.0, 2, 0], [2, 2, 0], [0, 0, 4]], dtype=torch.float64)
    torch.testing.assert_close(horiz, expected)
    runs = glrlm_matrices(lv, 3, three_d=False)[0, 0]
    # Horizontal runs: 1 of lengths 2 and 1; 2 of lengths 1 and 2; 3 of length 3.
    torch.testing.assert_close(runs[0, :, :3], torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float64))
    # Vertical runs (direction index 2): 1 of lengths 2, 1; 2 of lengths 1, 2; 3 three times length 1.
    torch.testing.assert_close(runs[2, :, :3], torch.tensor([[1.0, 1, 0], [1, 1, 0], [3, 0, 0]], dtype=torch.float64))
    # 8-connected zones: one zone of size 3 per grey level.
    szm = FAMILIES["glszm"][0](img, roi, 3, aggregation="2d")
    assert float(szm["szm_z_perc"][0]) == pytest.approx(3 / 9)
    assert float(szm["szm_lze"][0]) == pytest.approx(9.0)
    assert float(szm["szm_sze"][0]) == pytest.approx(1 / 9)
    # Distance to the edge: only the centre voxel (level 2) has distance 2, so every zone has 1.
    dzm = FAMILIES["gldzm"][0](img, roi, 3, aggregation="2d")
    assert float(dzm["dzm_sde"][0]) == pytest.approx(1.0)
    # NGTDM of the centre voxel: level 2, neighbour mean (1+1+2+1+2+3+3+3)/8 = 2 -> contributes 0.
    ngt = FAMILIES["ngtdm"][0](img, roi, 3, aggregation="2d")
    assert torch.isfinite(ngt["ngt_strength"]).all()
    ngl = FAMILIES["ngldm"][0](img, roi, 3, aggregation="2d")
    assert float(ngl["ngl_dc_perc"][0]) == 1.0


def test_aggregation_aliases_and_registry() -> None:
    assert parse_directional_aggregation("2D_comb") == "2d_merged"
    assert parse_directional_aggregation("2_5D_avg") == "2.5d_d_merged"
    assert parse_directional_aggregation("2.5D_v_mrg") == "2.5d_v_merged"
    assert parse_directional_aggregation("3D_comb") == "3d_merged"
    assert parse_zone_aggregation("2_5D") == "2.5d"
    assert parse_zone_aggregation("3d_avg") == "3d"
    with pytest.raises(ValueError, match="unknown texture aggregation"):
        parse_directional_aggregation("4d")
    n_features = 0
    for name, (fn, features, aggs) in FAMILIES.items():
        assert callable(fn) and aggs
        for tag in features:
            assert len(IBSI_CODES[tag]) == 4 and IBSI_CODES[tag].isalnum()
        n_features += len(features)
    assert n_features == 25 + 16 + 16 + 16 + 5 + 17
    levels, roi = _random_lesions(2, 1, 10, 4, seed=5)
    a = FAMILIES["glcm"][0](levels, roi, 4, aggregation="2D_comb")
    b = FAMILIES["glcm"][0](levels, roi, 4, aggregation="2d_merged")
    for tag in a:
        torch.testing.assert_close(a[tag], b[tag], equal_nan=True)


def test_bad_inputs_raise_specific_errors() -> None:
    fn = FAMILIES["glcm"][0]
    levels, roi = _random_lesions(1, 1, 8, 4, seed=6)
    with pytest.raises(ValueError, match=r"1\.\.4"):
        fn(torch.where(roi, torch.full_like(levels, 5), levels), roi, 4)
    with pytest.raises(ValueError, match="shape"):
        fn(levels[0], roi[0], 4)
    with pytest.raises(ValueError, match="differs"):
        fn(levels, roi[:, :, :4], 4)
    with pytest.raises(TypeError, match="integer"):
        fn(levels.float(), roi, 4)
    with pytest.raises(ValueError, match="aggregation"):
        FAMILIES["glszm"][0](levels, roi, 4, aggregation="sideways")


# pyradiomics tag -> our tag for features whose definitions coincide with IBSI on a single 2D slice
# (pyradiomics averages per-angle features, i.e. our "2d_avg", and uses 8-connected 2D zones).
PYRADIOMICS_MATCHES = {
    "glcm": ("RadiomicsGLCM", "2d_avg", {"JointEnergy": "cm_energy", "Contrast": "cm_contrast",
                                         "Correlation": "cm_corr", "JointEntropy": "cm_joint_entr",
                                         "ClusterShade": "cm_clust_shade", "Idm": "cm_inv_diff_mom",
                                         "MaximumProbability": "cm_joint_max", "Imc2": "cm_info_corr2"}),
    "glrlm": ("RadiomicsGLRLM", "2d_avg", {"ShortRunEmphasis": "rlm_sre", "RunPercentage": "rlm_r_perc",
                                           "RunEntropy": "rlm_rl_entr", "RunVariance": "rlm_rl_var"}),
    "glszm": ("RadiomicsGLSZM", "2d", {"SmallAreaEmphasis": "szm_sze", "ZonePercentage": "szm_z_perc",
                                       "ZoneEntropy": "szm_zs_entr", "ZoneVariance": "szm_zs_var"}),
    "ngldm": ("RadiomicsGLDM", "2d", {"SmallDependenceEmphasis": "ngl_lde", "DependenceEntropy": "ngl_dc_entr",
                                      "DependenceVariance": "ngl_dc_var"}),
    "ngtdm": ("RadiomicsNGTDM", "2d", {"Coarseness": "ngt_coarseness", "Contrast": "ngt_contrast",
                                       "Busyness": "ngt_busyness", "Complexity": "ngt_complexity",
                                       "Strength": "ngt_strength"}),
}


@pytest.mark.parametrize("family", sorted(PYRADIOMICS_MATCHES))
def test_agrees_with_pyradiomics_where_definitions_coincide(family: str) -> None:
    radiomics = pytest.importorskip("radiomics")
    sitk = pytest.importorskip("SimpleITK")
    import importlib
    import logging

    import numpy as np

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    levels, roi = _random_lesions(1, 1, 30, 8, seed=7)
    levels = torch.where(roi, levels, torch.ones_like(levels))
    cls_name, aggregation, mapping = PYRADIOMICS_MATCHES[family]
    module = importlib.import_module(f"radiomics.{cls_name[len('Radiomics'):].lower()}")
    extractor = getattr(module, cls_name)(
        sitk.GetImageFromArray(levels[0].numpy().astype(np.float32)),
        sitk.GetImageFromArray(roi[0].numpy().astype(np.uint8)),
        binWidth=1, force2D=True, force2Ddimension=0)  # binWidth 1 keeps our levels unchanged
    extractor.enableAllFeatures()
    theirs = extractor.execute()
    ours = FAMILIES[family][0](levels, roi, 8, aggregation=aggregation)
    assert radiomics is not None
    for their_tag, our_tag in mapping.items():
        assert float(ours[our_tag][0]) == pytest.approx(float(theirs[their_tag]), rel=1e-6, abs=1e-9), our_tag


@pytest.mark.skipif(not os.environ.get("BREASTAI_BENCH"), reason="benchmark; set BREASTAI_BENCH=1 to run")
def test_throughput_benchmark_64_lesions() -> None:
    """64 synthetic 150x150 lesions, 32 levels, 2D aggregation, one CPU thread (prints timings)."""
    import time

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(64, 1, 150, 150, generator=g), 5, 1, 2)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    levels = (((x - lo) / (hi - lo)) * 32).long().clamp(0, 31) + 1
    yy, xx = torch.meshgrid(torch.arange(150), torch.arange(150), indexing="ij")
    roi = ((((yy - 75) / 70.0) ** 2 + ((xx - 75) / 60.0) ** 2) <= 1)[None, None].expand(64, 1, 150, 150).clone()
    for fn, _, aggs in FAMILIES.values():
        fn(levels[:2], roi[:2], 32, aggregation=aggs[0])  # imports and caches
    best: dict[str, float] = {}
    for _ in range(3):
        for name, (fn, _, aggs) in FAMILIES.items():
            t0 = time.perf_counter()
            fn(levels, roi, 32, aggregation=aggs[0])
            best[name] = min(best.get(name, math.inf), time.perf_counter() - t0)
    total = sum(best.values())
    print({k: round(v, 3) for k, v in best.items()}, f"total {total:.3f} s, {1000 * total / 64:.1f} ms/lesion")
    assert total < 64 * 0.5  # sanity bound only; the printed numbers are the result


@pytest.mark.parametrize("family", ["glcm", "glrlm"])
def test_memory_chunking_over_the_batch_is_exact(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import functools
    import importlib

    module = importlib.import_module(f"breastai.radiomics.texture.{family}")
    fn = getattr(module, f"{family}_features")
    levels, roi = _random_lesions(5, 2, 10, 6, seed=8)
    whole = fn(levels, roi, 6, aggregation="2d_avg")
    # A budget of one element forces one lesion per chunk.
    monkeypatch.setattr(module, "in_batch_chunks", functools.partial(module.in_batch_chunks, budget=1))
    chunked = fn(levels, roi, 6, aggregation="2d_avg")
    for tag in whole:
        torch.testing.assert_close(chunked[tag], whole[tag], rtol=0, atol=0, equal_nan=True)


def test_uniform_call_signature() -> None:
    levels, roi = _random_lesions(1, 1, 8, 4, seed=9)
    for name, (fn, features, aggs) in FAMILIES.items():
        out = fn(levels, roi, 4, aggregation=aggs[0], distance=1)
        assert set(out) == set(features)
    with pytest.raises(ValueError, match="distance=1"):
        FAMILIES["glszm"][0](levels, roi, 4, distance=2)
    # Larger Chebyshev distances are supported where IBSI defines them.
    assert torch.isfinite(FAMILIES["glcm"][0](levels, roi, 4, distance=2)["cm_contrast"]).all()
    assert torch.isfinite(FAMILIES["ngldm"][0](levels, roi, 4, distance=2, alpha=1)["ngl_lde"]).all()
