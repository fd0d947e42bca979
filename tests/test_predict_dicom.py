"""Predict on DICOM: same scores as PNG, identifiers never leak, the reader's crop and flip undone."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image
from conftest import PATIENT_ID, write_grey_dicom as _write_dicom

from breastai.models.checkpoint_io import load_checkpoint
from breastai.inference.predictor import Predictor
from breastai.inference.writers import run_predict


def test_png_and_grey_dicom_give_the_same_probability(predictor, sample, tmp_path):
    pixels = np.asarray(Image.open(sample[0]).convert("L"))
    dcm = _write_dicom(tmp_path / "same.dcm", pixels)
    a, b = predictor.predict([sample[0], dcm])
    assert a["error"] is None and b["error"] is None
    assert abs(a["probability"] - b["probability"]) < 1e-4
    # The calibrated probability is sigmoid((logit - offset) / T) and the label follows the threshold.
    c = predictor.calibration
    assert a["probability"] == pytest.approx(1 / (1 + np.exp(-(a["logit"] - c["logit_offset"]) / c["temperature"])), abs=1e-9)
    assert a["label"] == predictor.classes[int(a["probability"] >= predictor.threshold)]


def test_identifiers_never_leak(ckpt, sample, tmp_path):
    from breastai.data.readers.dicom_header import uid_hash

    pixels = np.asarray(Image.open(sample[0]).convert("L"))
    uid = "1.2.826.0.1.3680043.8.498.99"
    # A PACS export that names folders after the patient: the path itself carries identifiers.
    folder = tmp_path / "in" / f"DOE_JANET_{PATIENT_ID}"
    folder.mkdir(parents=True)
    dcm = _write_dicom(folder / "img1.dcm", pixels, uid)
    out = tmp_path / "out"
    records, _ = run_predict(ckpt, [dcm], out, saliency="gradcam", device="cpu")
    assert records[0]["id"] == uid_hash(uid)
    assert records[0]["source"].endswith("[redacted]_[redacted]_[redacted]/img1.dcm")
    texts = [(out / "predictions.csv").read_text(), (out / "predictions.json").read_text()]
    texts += [str(p) for p in out.rglob("*")]
    for t in texts:
        for secret in (PATIENT_ID, "Doe", "DOE", "Janet", "JANET", uid):
            assert secret not in t
    # Asked for explicitly, they are there.
    records, _ = run_predict(ckpt, [dcm], tmp_path / "out2", saliency="none", keep_identifiers=True, device="cpu")
    assert records[0]["patient_id"] == PATIENT_ID and records[0]["id"] == "img1.dcm"


def test_identifiers_never_leak_from_failed_files_datalist_ids_or_uid_file_names(ckpt, sample, tmp_path):
    from breastai.data.datalist import write_datalist
    from breastai.data.readers.dicom_header import uid_hash

    pixels = np.asarray(Image.open(sample[0]).convert("L"))
    folder = tmp_path / "in" / PATIENT_ID
    folder.mkdir(parents=True)
    uid_named = _write_dicom(folder / "1.2.826.0.1.3680043.8.498.77.dcm", pixels, "1.2.826.0.1.3680043.8.498.77")
    good = _write_dicom(folder / f"{PATIENT_ID}_scan.dcm", pixels, "1.2.826.0.1.3680043.8.498.78")
    broken = _write_dicom(folder / "broken.dcm", pixels, "1.2.826.0.1.3680043.8.498.79")
    broken.write_bytes(broken.read_bytes()[: -(pixels.size // 2)])  # header intact, pixel data cut short
    # A datalist whose case_id was made from the file name (as `prepare folder` does).
    datalist = tmp_path / "list.csv"
    write_datalist([{"case_id": f"malignant_{PATIENT_ID}_scan", "image": str(good), "label": "malignant"}], datalist)
    out = tmp_path / "out"
    records, run = run_predict(ckpt, [uid_named, broken, datalist], out, saliency="gradcam", device="cpu")
    assert [r["id"] for r in records] == [uid_hash("1.2.826.0.1.3680043.8.498.77"),
                                          uid_hash("1.2.826.0.1.3680043.8.498.79"),
                                          uid_hash("1.2.826.0.1.3680043.8.498.78")]
    assert records[1]["error"] and "broken.dcm" in records[1]["error"] and run["n_failed"] == 1
    texts = [(out / "predictions.csv").read_text(), (out / "predictions.json").read_text()]
    texts += [str(p) for p in out.rglob("*")]
    for t in texts:
        for secret in (PATIENT_ID, "1.2.826.0.1.3680043.8.498.7"):
            assert secret not in t


def test_reader_crop_and_flip_are_undone_and_the_model_stays_intact(predictor, ckpt, sample, tmp_path):
    from breastai.data.readers import registry as io

    arr = np.asarray(Image.open(sample[0]).convert("L")).astype(np.float32)
    rows, cols = arr.shape[0] + 20, arr.shape[1] + 30

    def read(path, **_):  # a reader that crops and mirrors, as the DICOM mammography reader does
        return arr[:, ::-1].copy(), {"crop_box": [5, 5 + arr.shape[0], 30, 30 + arr.shape[1]], "flipped_lr": True,
                                     "rows": rows, "cols": cols}

    io.register_reader("test_cropflip", lambda p: p.suffix == ".cfl", read, first=True)
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}  # batch norm folded at load
    try:
        f = tmp_path / "x.cfl"
        f.write_bytes(b"x")
        rec = predictor.predict(f, saliency="gradcam++", return_maps=True, tta=3)[0]
    finally:
        io._READERS[:] = [r for r in io._READERS if r.name != "test_cropflip"]
    assert rec["error"] is None
    assert rec["saliency_map"].shape == rec["image"].shape == (rows, cols)
    assert rec["image"][:5].max() == 0 and rec["image"][:, :30].max() == 0  # outside the reader's crop
    # The grey image came back un-mirrored at its place.
    lo, hi = np.percentile(arr, (0.5, 99.5))
    np.testing.assert_allclose(rec["image"][5 : 5 + arr.shape[0], 30:], np.clip((arr - lo) / (hi - lo), 0, 1), atol=1e-5)
    # Saliency and TTA passes never leave the model in training mode or change its weights.
    assert not predictor.model.training
    for k, v in predictor.model.state_dict().items():
        torch.testing.assert_close(v.cpu(), before[k], msg=k)


def test_all_real_mammography_dicoms_are_scored(ckpt, tmp_path):
    """The 8 real DICOM mammograms (JPEG Lossless / JPEG 2000, MONOCHROME1/2) go through predict."""
    from conftest import real_data

    folder = real_data("dicom-mg")
    records, _ = run_predict(ckpt, [str(folder)], tmp_path / "out", saliency="gradcam")
    assert len(records) == 8
    assert [r["error"] for r in records if r["error"]] == []
    for r in records:
        assert 0.0 <= r["probability"] <= 1.0
        assert r["id"] not in r["source"], "DICOM ids are SOP UID hashes, not file names"
        assert np.load(tmp_path / "out" / r["saliency_npy"]).ndim == 2


def test_masks_and_boxes_drawn_on_the_stored_image_follow_the_readers_crop_and_flip(ckpt, sample, tmp_path):
    """A DICOM mammogram is cropped to the breast and mirrored by its reader; the user's mask or box
    is drawn on the image as stored and must land on the same lesion in the reader's grid."""
    from breastai.data.readers import registry as io
    from breastai.data.readers.masks import LesionBox

    state = load_checkpoint(ckpt)
    state.config["preprocess"]["mode"] = "crop"
    p = Predictor.from_state(state, device="cpu")
    arr = np.asarray(Image.open(sample[0]).convert("L")).astype(np.float32)
    m = np.asarray(Image.open(sample[1]).convert("L")) > 0
    h, w = arr.shape
    rows, cols = h + 20, w + 30
    stored_mask = np.zeros((rows, cols), bool)
    stored_mask[5:5 + h, 30:30 + w] = m[:, ::-1]  # the reader keeps rows 5.., columns 30.. and mirrors them
    Image.fromarray(stored_mask.astype(np.uint8) * 255).save(tmp_path / "stored_mask.png")

    def read(path, **_):
        return arr.copy(), {"crop_box": [5, 5 + h, 30, 30 + w], "flipped_lr": True, "rows": rows, "cols": cols}

    ys, xs = np.nonzero(m)
    sy, sx = np.nonzero(stored_mask)
    io.register_reader("test_cropflip", lambda q: q.suffix == ".cfl", read, first=True)
    try:
        f = tmp_path / "x.cfl"
        f.write_bytes(b"x")
        ref_mask, ref_box = p.predict([sample[0], sample[0]], masks=[str(sample[1]),
                                      LesionBox(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))])
        got_mask, got_box = p.predict([f, f], masks=[str(tmp_path / "stored_mask.png"),
                                      LesionBox(int(sx.min()), int(sy.min()), int(sx.max()), int(sy.max()))],
                                      saliency="gradcam", return_maps=True)
    finally:
        io._READERS[:] = [r for r in io._READERS if r.name != "test_cropflip"]
    assert got_mask["error"] is None and got_box["error"] is None
    assert got_mask["probability"] == pytest.approx(ref_mask["probability"], abs=1e-6)
    assert got_box["probability"] == pytest.approx(ref_box["probability"], abs=1e-6)
    # Mapped back, the model's lesion is where the user drew it on the stored image.
    np.testing.assert_array_equal(got_mask["lesion_mask"], stored_mask)
    stored_box = np.zeros_like(stored_mask)
    stored_box[sy.min():sy.max() + 1, sx.min():sx.max() + 1] = True
    np.testing.assert_array_equal(got_box["lesion_mask"], stored_box)


def test_a_box_follows_the_reader_crop_and_flip():
    from breastai.data.readers.registry import ImageReadError
    from breastai.data.readers.masks import LesionBox
    from breastai.data.geometry import undo_geometry

    # Stored image 30 x 60; the reader kept rows 5..14 and columns 30..49, then mirrored them.
    meta = {"crop_box": [5, 15, 30, 50], "flipped_lr": True, "rows": 30, "cols": 60}
    mask = LesionBox(32, 6, 35, 8).to_mask((10, 20), meta)
    assert mask.sum() == 4 * 3 and mask[1:4, 14:18].all()
    back = undo_geometry(mask.astype(np.float32), meta) > 0.5
    expected = np.zeros((30, 60), bool)
    expected[6:9, 32:36] = True
    np.testing.assert_array_equal(back, expected)
    with pytest.raises(ImageReadError, match="outside the part the reader kept"):
        LesionBox(0, 0, 20, 4).to_mask((10, 20), meta, "x.dcm")


def test_mask_on_reader_grid_moves_stored_masks_and_names_misfits():
    from breastai.data.readers.registry import ImageReadError
    from breastai.data.readers.masks import mask_on_reader_grid

    m = np.zeros((4, 6), bool)
    m[1, 0] = True
    # Mirrored without a crop: same size both ways, and a mask is drawn on the stored image.
    np.testing.assert_array_equal(mask_on_reader_grid(m, (4, 6), {"flipped_lr": True, "rows": 4, "cols": 6}), m[:, ::-1])
    # Cropped: a stored-size mask is cut like the image, a reader-size one is taken as is.
    meta = {"crop_box": [1, 3, 0, 3], "flipped_lr": False, "rows": 4, "cols": 6}
    np.testing.assert_array_equal(mask_on_reader_grid(m, (2, 3), meta), m[1:3, 0:3])
    np.testing.assert_array_equal(mask_on_reader_grid(m[1:3, 0:3], (2, 3), meta), m[1:3, 0:3])
    np.testing.assert_array_equal(mask_on_reader_grid(m, (4, 6), {}), m)  # a plain image: nothing moves
    with pytest.raises(ImageReadError, match=r"m.png: mask shape \(5, 5\) does not match image shape \(2, 3\) \(stored \(4, 6\)\)"):
        mask_on_reader_grid(np.ones((5, 5)), (2, 3), meta, "m.png")


def test_predict_reads_each_dicom_header_once(ckpt, tmp_path, monkeypatch):
    """Identity, modality and exam grouping ask one header read per file (the reader's own strict header
    check before decoding, which refuses oversized images unread, is separate)."""
    import pydicom

    from breastai.data.readers import dicom_header

    paths = [_write_dicom(tmp_path / f"im{i}.dcm", (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8),
                          sop_uid=f"1.2.826.0.1.3680043.8.498.{900 + i}") for i in range(2)]
    dicom_header._cached_header.cache_clear()
    calls = []
    real = pydicom.dcmread

    def counting(fp, *a, **kw):
        calls.append((str(fp), bool(kw.get("stop_before_pixels")) and bool(kw.get("force"))))
        return real(fp, *a, **kw)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    records, _ = run_predict(ckpt, paths, tmp_path / "out", saliency="none", device="cpu")
    assert all(r["error"] is None for r in records)
    for p in paths:
        assert sum(1 for f, header in calls if f.endswith(p.name) and header) == 1, calls
