"""The 8 real mammography DICOM files of ../shared/data/dicom-mg (GE and Hologic, JPEG Lossless
and JPEG 2000, MONOCHROME1/2, VOI LUT sequences, multi-valued windows, L/R, CC/MLO/XCCL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from breastai.data.geometry import undo_geometry
from breastai.data.readers import dicom as D
from breastai.data.readers import mammo
from breastai.data.readers.registry import load_image

DATA = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
FOLDER = DATA / "dicom-mg"
FILES = sorted(FOLDER.glob("*")) if FOLDER.is_dir() else []

pytestmark = pytest.mark.skipif(not FILES, reason=f"real DICOM samples not found in {FOLDER} (set BREASTAI_DATA)")


@pytest.fixture(scope="module")
def images() -> dict[str, D.DicomImage]:
    return {p.name: D.read_dicom(p) for p in FILES}


def test_all_files_found():
    assert len(FILES) == 8


def test_values_and_shape(images):
    for name, img in images.items():
        px = img.pixels
        assert px.dtype == np.float32 and px.ndim == 2, name
        assert px.min() >= 0 and px.max() <= 1, name
        assert px.std() > 0.05, f"{name}: output nearly constant, windowing wrong"
        assert img.meta["voi"] in ("lut", "window"), name
        assert img.meta["modality"] == "MG", name


def test_crop_inside_and_breast_brighter_than_background(images):
    for name, img in images.items():
        r0, r1, c0, c1 = img.crop_box
        assert 0 <= r0 < r1 <= img.meta["rows"] and 0 <= c0 < c1 <= img.meta["cols"], name
        assert img.pixels.shape == (r1 - r0, c1 - c0), name
        # the crop removes a real part of the detector (background, labels), except on the
        # biopsy scout whose field is all tissue
        if "STEREO_SCOUT" not in img.meta["image_type"]:
            assert (r1 - r0) * (c1 - c0) < 0.95 * img.meta["rows"] * img.meta["cols"], name
        small = img.pixels[::4, ::4]
        m = mammo.breast_mask(small)
        assert 0.2 < m.mean() < 0.99, name
        assert small[m].mean() > small[~m].mean() + 0.1, f"{name}: tissue not brighter than background (inversion?)"


def test_monochrome1_inverted(images):
    mono1 = [n for n, i in images.items() if i.meta["photometric"] == "MONOCHROME1"]
    assert len(mono1) == 4
    for n in mono1:
        img = images[n]
        assert img.meta["inverted"]
        # background (padding / air) is black after inversion
        assert np.median(img.pixels[:, -max(1, img.pixels.shape[1] // 20):]) < 0.05 or img.pixels.min() == 0, n


def test_canonical_orientation_left_and_right(images):
    lats = {img.meta["laterality"] for img in images.values()}
    assert lats == {"L", "R"}
    for name, img in images.items():
        assert img.flipped_lr == (img.meta["laterality"] == "R"), name
        assert img.meta["orientation_warning"] is None, name
        if "STEREO_SCOUT" in img.meta["image_type"]:
            continue  # biopsy scout: tissue fills the field, no chest wall in view
        q = max(1, img.pixels.shape[1] // 4)
        m = mammo.breast_mask(img.pixels[::4, ::4])
        assert m[:, : q // 4].mean() > m[:, -(q // 4):].mean(), f"{name}: breast mass not on the left"


def test_views_and_meta(images):
    views = {img.meta["view"] for img in images.values()}
    assert {"CC", "MLO", "XCCL"} <= views
    for name, img in images.items():
        text = repr(img.meta)
        assert "2.25." not in text.replace(name, ""), f"{name}: a UID leaked into meta"
        assert len(img.meta["sop_uid_hash"]) == 16
        json.dumps(img.meta)  # meta goes into datalists/reports as is


def test_window_index_changes_output():
    p = next(f for f in FILES if "182315515521588145112612132423407523968" in f.name)
    a = D.read_dicom(p, window_index=0)
    b = D.read_dicom(p, window_index=1)
    assert a.meta["voi_explanation"] == "NORMAL" and b.meta["voi_explanation"] == "HARDER"
    assert a.pixels.shape == b.pixels.shape and np.abs(a.pixels - b.pixels).mean() > 0.005


def test_load_image_matches_read_dicom(images):
    for p in FILES:
        arr, meta = load_image(p)
        assert meta["reader"] == "dicom"
        np.testing.assert_array_equal(arr, images[p.name].pixels)


def test_undo_geometry_real(images):
    name, img = next((n, i) for n, i in images.items() if i.flipped_lr)
    back = undo_geometry(img.pixels, img)
    assert back.shape == (img.meta["rows"], img.meta["cols"])
    r0, r1, c0, c1 = img.crop_box
    np.testing.assert_array_equal(back[r0:r1, c0:c1][:, ::-1], img.pixels)


def test_group_real_folder():
    groups = D.group_dicom_folder(FOLDER)
    assert sum(len(v) for v in groups.values()) == 8 and groups.notes == []
    assert all(len(k[0]) == 16 and len(k[1]) == 16 for k in groups)
    assert D.dicom_frame_count(FILES[0]) == 1


def test_orientation_from_content_when_header_silent(tmp_path, images):
    """Strip laterality and orientation from real files: the content decision must agree."""
    import pydicom

    for p in FILES:
        if "STEREO_SCOUT" in images[p.name].meta["image_type"] or images[p.name].meta["rows"] > 4000:
            continue  # no chest wall in view / keep the test fast
        ds = pydicom.dcmread(p)
        for tag in ("ImageLaterality", "Laterality", "PatientOrientation"):
            if tag in ds:
                delattr(ds, tag)
        q = tmp_path / p.name
        ds.save_as(q)
        img = D.read_dicom(q)
        assert img.meta["orientation_source"] == "content", p.name
        assert img.flipped_lr == images[p.name].flipped_lr, p.name
        assert img.meta["laterality"] == images[p.name].meta["laterality"], p.name
