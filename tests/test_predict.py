"""``breastai predict`` and the Predictor API on a tiny trained checkpoint."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from breastai.checkpoint import load_checkpoint
from breastai.predict import Predictor, expand_inputs, tta_views
from breastai.predict_cli import add_parser, run_predict

PATIENT_NAME, PATIENT_ID = "Doe^Janet", "PID-7734521"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, synth_datalist) -> Path:
    from conftest import _tiny_config

    from breastai.training import main

    out = main(_tiny_config(synth_datalist, tmp_path_factory.mktemp("run")))
    return Path(out["run_dir"]) / "best.pt"


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt, device="cpu")


@pytest.fixture(scope="module")
def sample(synth_datalist) -> tuple[Path, Path]:
    """One synthetic image and its mask."""
    row = next(csv.DictReader(open(synth_datalist)))
    base = synth_datalist.parent
    return base / row["image"], base / row["mask"].split(";")[0]


def _write_dicom(path: Path, pixels: np.ndarray, sop_uid: str = "1.2.826.0.1.3680043.8.498.12345") -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="breastai")
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


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
    from breastai.data.dicom import uid_hash

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
    from breastai.data.dicom import uid_hash

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


def test_outputs_maps_in_original_geometry_and_rerun_replaces(ckpt, sample, tmp_path):
    out = tmp_path / "out"
    records, run = run_predict(ckpt, [sample[0]], out, masks=[sample[1]], saliency="gradcam++", tta=4, device="cpu")
    rec = records[0]
    assert rec["error"] is None and rec["has_mask"] and 0 <= rec["uncertainty"] < 0.5
    shape = np.asarray(Image.open(sample[0])).shape[:2]
    smap = np.load(out / rec["saliency_npy"])
    assert smap.shape == shape and smap.dtype == np.float32 and 0 <= smap.min() and smap.max() <= 1
    png = np.asarray(Image.open(out / rec["saliency_png"]))
    assert png.shape == (*shape, 3)
    assert (png == (0, 255, 0)).all(-1).sum() > 10  # the lesion outline is drawn
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    js = json.loads((out / "predictions.json").read_text())
    assert rows[0]["id"] == js["records"][0]["id"] == sample[0].name
    assert float(rows[0]["probability"]) == pytest.approx(rec["probability"], abs=1e-6)
    assert js["run"]["n"] == 1 and js["run"]["n_failed"] == 0
    # A rerun into the same folder: only the new run's maps remain, and every referenced file exists.
    records2, run2 = run_predict(ckpt, [sample[0], sample[0]], out, saliency="gradcam", device="cpu")
    assert run2["run_id"] != run["run_id"]
    assert [d.name for d in (out / "saliency").iterdir()] == [run2["run_id"]]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 2 and all((out / r["saliency_npy"]).is_file() for r in rows)
    assert len({r["saliency_npy"] for r in rows}) == 2  # same file name twice: no overwrite
    assert rows[0]["uncertainty"] == ""  # tta=0: no uncertainty


def test_map_upsampling_is_chosen_and_recorded(ckpt, sample, tmp_path):
    runs = {}
    for mode in ("bicubic", "bilinear"):
        records, run = run_predict(ckpt, [sample[0]], tmp_path / mode, masks=[sample[1]], saliency="gradcam++",
                                   device="cpu", saliency_upsample=mode)
        assert run["saliency_upsample"] == mode
        runs[mode] = (records[0]["probability"], np.load(tmp_path / mode / records[0]["saliency_npy"]))
    _, run = run_predict(ckpt, [sample[0]], tmp_path / "default", masks=[sample[1]], device="cpu")
    assert run["saliency_upsample"] == "bicubic"
    assert runs["bicubic"][0] == runs["bilinear"][0]  # the score does not depend on how the map is drawn
    assert not np.allclose(runs["bicubic"][1], runs["bilinear"][1])
    with pytest.raises(ValueError, match="unknown map upsampling"):
        run_predict(ckpt, [sample[0]], tmp_path / "bad", masks=[sample[1]], device="cpu", saliency_upsample="nearest")


def test_every_failure_kind_gives_a_specific_record(predictor, sample, tmp_path):
    good = sample[0]
    arr = np.asarray(Image.open(good).convert("L"))
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    unsupported = tmp_path / "notes.xyz"
    unsupported.write_text("hello")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(blank)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(arr[:31, :200]).save(tiny)  # one side under MIN_IMAGE_SIDE
    bad_mask = tmp_path / "bad_mask.png"
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(bad_mask)
    empty_mask = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros(arr.shape, np.uint8)).save(empty_mask)
    cases = {
        "missing": (tmp_path / "nope.png", None, "file not found"),
        "truncated": (trunc, None, "truncated or corrupt"),
        "empty file": (empty, None, "file is empty"),
        "unsupported": (unsupported, None, "unsupported file type"),
        "blank": (blank, None, "blank"),
        "too small": (tiny, None, "too small"),
        "mask mismatch": (good, [str(bad_mask)], "does not match image shape"),
        "empty mask": (good, [str(empty_mask)], "mask is empty"),
        "good": (good, None, None),
    }
    recs = predictor.predict([c[0] for c in cases.values()], masks=[c[1] for c in cases.values()], saliency="gradcam")
    for (kind, (path, _, expected)), rec in zip(cases.items(), recs):
        if expected is None:
            assert rec["error"] is None and rec["probability"] is not None, kind
        else:
            assert rec["error"] and expected in rec["error"] and str(path) in rec["error"], (kind, rec["error"])
            assert rec["probability"] is None and rec["label"] is None


def test_crop_mode_checkpoint_needs_a_mask(ckpt, sample):
    state = load_checkpoint(ckpt)
    state["config"]["preprocess"]["mode"] = "crop"
    p = Predictor(state, device="cpu")
    no_mask, with_mask = p.predict([sample[0], sample[0]], masks=[None, [str(sample[1])]])
    assert "lesion mask is needed" in no_mask["error"]
    assert with_mask["error"] is None and with_mask["has_mask"]


def test_numpy_input_folder_input_and_tta(predictor, sample, tmp_path):
    arr = np.asarray(Image.open(sample[0]).convert("L"))
    rec = predictor.predict(arr, saliency="gradcam++", return_maps=True, tta=6)[0]
    assert rec["id"] == "array0" and rec["saliency_map"].shape == arr.shape
    rec2 = predictor.predict(arr, saliency="none", tta=6)[0]
    assert rec2["probability"] == pytest.approx(rec["probability"], abs=1e-6)
    assert rec2["uncertainty"] == pytest.approx(rec["uncertainty"], abs=1e-9)  # seeded: reproducible
    # Folders: recursive, mask files and non-images skipped with a note.
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "a" / "b" / "x.png")
    Image.fromarray(arr).save(tmp_path / "a" / "x_mask.png")
    (tmp_path / "a" / "readme.txt").write_text("hi")
    items, notes = expand_inputs(tmp_path / "a", find_masks=True)
    assert [Path(i.source).name for i in items] == ["x.png"]
    assert any("x_mask.png: skipped" in n for n in notes) and any("readme.txt: skipped" in n for n in notes)
    # TTA views: the right shape, and a binary mask channel stays binary.
    x = torch.rand(1, 2, 16, 16)
    x[:, 1] = (x[:, 1] > 0.5).float()
    v = tta_views(x, 5, {"hflip": 0.5})
    assert v.shape == (5, 2, 16, 16) and set(v[:, 1].unique().tolist()) <= {0.0, 1.0}


def test_cli_exit_codes(ckpt, sample, tmp_path, capsys):
    assert _cli(["predict", "--checkpoint", str(ckpt), str(sample[0]), "--out", str(tmp_path / "o1"),
                 "--saliency", "none"]) == 0
    assert "predicted 1 of 1 image(s), 0 failed" in capsys.readouterr().out
    assert _cli(["predict", "--checkpoint", str(ckpt), str(sample[0]), str(tmp_path / "missing.png"),
                 "--out", str(tmp_path / "o2"), "--saliency", "none"]) == 1
    assert "1 failed" in capsys.readouterr().out
    assert _cli(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(sample[0]), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "Traceback" not in err
    bogus = tmp_path / "bogus.pt"
    torch.save({"model": {"name": "no_such_model"}, "weights": {}}, bogus)
    assert _cli(["predict", "--checkpoint", str(bogus), str(sample[0]), "--out", str(tmp_path / "o4")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _cli(["predict", "--help"])
    assert e.value.code == 0 and "--saliency" in capsys.readouterr().out


def test_reader_crop_and_flip_are_undone_and_the_model_stays_intact(predictor, ckpt, sample, tmp_path):
    from breastai.data import io

    arr = np.asarray(Image.open(sample[0]).convert("L")).astype(np.float32)
    rows, cols = arr.shape[0] + 20, arr.shape[1] + 30

    def read(path, **_):  # a reader that crops and mirrors, as the DICOM mammography reader does
        return arr[:, ::-1].copy(), {"crop_box": [5, 5 + arr.shape[0], 30, 30 + arr.shape[1]], "flipped_lr": True,
                                     "rows": rows, "cols": cols}

    io.register_reader("test_cropflip", lambda p: p.suffix == ".cfl", read, first=True)
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
    ref = load_checkpoint(ckpt)["weights"]
    for k, v in predictor.model.state_dict().items():
        torch.testing.assert_close(v.cpu(), ref[k], msg=k)


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


def test_flip_average_scores_alike_in_training_evaluate_and_predict(synth_datalist, tmp_path):
    """``eval.flip_average``: the run's held-out logits, ``evaluate``'s and ``predict``'s agree, and
    each is the mean of the image's and its mirror's logits."""
    from conftest import _tiny_config

    from breastai.data.frames import read_samples
    from breastai.training import main, predict_records

    cfg = _tiny_config(synth_datalist, tmp_path, "eval.flip_average=true")
    run_dir = Path(main(cfg)["run_dir"])
    state = load_checkpoint(run_dir / "best.pt")
    records = read_samples(synth_datalist, state["config"]["data"])[:6]
    flipped = predict_records(state, records, torch.device("cpu"))["logit"]
    plain_state = {**state, "config": {**state["config"], "eval": {**state["config"]["eval"], "flip_average": False}}}
    plain = predict_records(plain_state, records, torch.device("cpu"))["logit"]
    assert np.abs(flipped - plain).max() > 1e-4  # the toy model is not mirror-symmetric

    pred = Predictor(state, device="cpu")
    recs = pred.predict([r["image"] for r in records], masks=[r["mask"] for r in records])
    np.testing.assert_allclose([r["logit"] for r in recs], flipped, atol=1e-4)
    # The mirror half: what the plain model gives on left-right mirrored pixels.
    mirrored = [np.asarray(Image.open(r["image"]).convert("L"))[:, ::-1].copy() for r in records]
    mirror_masks = [np.asarray(Image.open(r["mask"][0]).convert("L"))[:, ::-1] > 0 for r in records]
    recs_m = Predictor(plain_state, device="cpu").predict(mirrored, masks=mirror_masks)
    np.testing.assert_allclose((plain + np.array([r["logit"] for r in recs_m])) / 2, flipped, atol=1e-4)


def test_an_older_checkpoint_takes_defaults_for_newer_config_keys(ckpt, sample, tmp_path):
    """Keys added after a checkpoint was written are filled in from the defaults at load time, so
    the checkpoint scores exactly as before."""
    from breastai.checkpoint import save_checkpoint

    state = load_checkpoint(ckpt)
    old = {**state, "config": {**state["config"],
                               "preprocess": {k: v for k, v in state["config"]["preprocess"].items() if k != "min_crop_fraction"},
                               "eval": {k: v for k, v in state["config"]["eval"].items() if k != "flip_average"}}}
    save_checkpoint(tmp_path / "old.pt", old)
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["config"]["preprocess"]["min_crop_fraction"] == 0.0
    assert loaded["config"]["eval"]["flip_average"] is False
    pred = Predictor(loaded, device="cpu")
    box = [t for t in pred._steps if hasattr(t, "min_fraction")][0]
    assert box.min_fraction == 0.0
    a, b = pred.predict([sample[0]], masks=[sample[1]])[0], Predictor(state, device="cpu").predict([sample[0]], masks=[sample[1]])[0]
    assert a["error"] is None and a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_a_bounding_box_stands_in_for_a_mask(ckpt, sample, tmp_path, capsys):
    from breastai.data.io import LesionBox

    state = load_checkpoint(ckpt)
    state["config"]["preprocess"]["mode"] = "crop"
    p = Predictor(state, device="cpu")
    m = np.asarray(Image.open(sample[1]).convert("L")) > 0
    ys, xs = np.nonzero(m)
    box = LesionBox(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    filled = np.zeros_like(m)
    filled[box.y0:box.y1 + 1, box.x0:box.x1 + 1] = True
    Image.fromarray(filled.astype(np.uint8) * 255).save(tmp_path / "box_mask.png")
    as_box, as_png = p.predict([sample[0], sample[0]], masks=[box, str(tmp_path / "box_mask.png")])
    assert as_box["error"] is None and as_box["has_mask"]
    assert as_box["probability"] == pytest.approx(as_png["probability"], abs=1e-7)
    # From the command line; a box outside the image fails that image only.
    ckpt_crop = tmp_path / "crop.pt"
    torch.save(state, ckpt_crop)
    spec = f"{box.x0},{box.y0},{box.x1},{box.y1}"
    assert _cli(["predict", "--checkpoint", str(ckpt_crop), str(sample[0]), str(sample[0]), "--box", spec,
                 "--box", "5000,5000,5010,5010", "--out", str(tmp_path / "o"), "--saliency", "none"]) == 1
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert float(rows[0]["probability"]) == pytest.approx(as_box["probability"], abs=1e-6)
    assert "lies outside the image" in rows[1]["error"] and str(sample[0]) in rows[1]["error"]
    capsys.readouterr()
    for bad, msg in ((["--box", "1,2,3"], "four integers"), (["--box", "9,2,3,4"], "X1 must be >= X0"),
                     (["--box", spec, "--mask", str(sample[1])], "either --mask or --box")):
        assert _cli(["predict", "--checkpoint", str(ckpt_crop), str(sample[0]), *bad, "--out", str(tmp_path / "o2")]) == 2
        assert msg in capsys.readouterr().err


def test_masks_and_boxes_drawn_on_the_stored_image_follow_the_readers_crop_and_flip(ckpt, sample, tmp_path):
    """A DICOM mammogram is cropped to the breast and mirrored by its reader; the user's mask or box
    is drawn on the image as stored and must land on the same lesion in the reader's grid."""
    from breastai.data import io
    from breastai.data.io import LesionBox

    state = load_checkpoint(ckpt)
    state["config"]["preprocess"]["mode"] = "crop"
    p = Predictor(state, device="cpu")
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
    from breastai.data.io import ImageReadError, LesionBox
    from breastai.data.mammo import undo_geometry

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
    from breastai.data.io import ImageReadError, mask_on_reader_grid

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


def test_folder_search_skips_hidden_folders_and_earlier_outputs(ckpt, sample, tmp_path):
    src = tmp_path / "in"
    (src / ".ipynb_checkpoints").mkdir(parents=True)
    shutil.copy(sample[0], src / "a.png")
    shutil.copy(sample[0], src / ".ipynb_checkpoints" / "a-checkpoint.png")  # a hidden copy
    for _ in range(2):  # the second run finds the first run's overlays inside the input folder
        records, _ = run_predict(ckpt, [src], src / "preds", saliency="gradcam", device="cpu")
        assert [r["id"] for r in records] == ["a.png"]


def test_sibling_masks_any_image_suffix_and_glob_characters(tmp_path):
    from breastai.predict import expand_inputs

    img = np.full((40, 40), 90, np.uint8)
    for name, mask in (("img[1].png", "img[1]_mask.png"), ("up.PNG", "up_mask.png"), ("j.jpg", "j_mask.png"),
                       ("k.png", "k_mask_1.png")):
        Image.fromarray(img).save(tmp_path / name)
        Image.fromarray(img).save(tmp_path / mask)
    Image.fromarray(img).save(tmp_path / "k_1_mask.png")  # another image's mask (k_1), not k's
    items, _ = expand_inputs([tmp_path], find_masks=True)
    got = {Path(it.image).name: [Path(m).name for m in it.mask or []] for it in items}
    assert got == {"img[1].png": ["img[1]_mask.png"], "up.PNG": ["up_mask.png"], "j.jpg": ["j_mask.png"],
                   "k.png": ["k_mask_1.png"]}


def test_masks_as_arrays_and_tensors_for_a_crop_checkpoint(ckpt, sample):
    state = load_checkpoint(ckpt)
    state["config"]["preprocess"]["mode"] = "crop"
    p = Predictor(state, device="cpu")
    img = np.asarray(Image.open(sample[0]).convert("L"))
    mask = np.asarray(Image.open(sample[1])) > 0
    by_file, by_array, by_tensor = p.predict([sample[0]] * 3, masks=[[str(sample[1])], mask, torch.from_numpy(mask)])
    assert by_file["error"] is None and by_array["error"] is None and by_tensor["error"] is None
    assert by_array["probability"] == pytest.approx(by_file["probability"], abs=1e-6)
    assert by_tensor["probability"] == pytest.approx(by_file["probability"], abs=1e-6)
    assert p.predict(img, masks=[mask])[0]["error"] is None


def test_an_empty_mask_found_beside_an_image_is_no_error_for_a_whole_image_model(predictor, sample, tmp_path):
    shutil.copy(sample[0], tmp_path / "normal.png")
    Image.fromarray(np.zeros(Image.open(sample[0]).size[::-1], np.uint8)).save(tmp_path / "normal_mask.png")
    found = predictor.predict(tmp_path / "normal.png", find_masks=True)[0]
    assert found["error"] is None and found["has_mask"] is False
    given = predictor.predict(tmp_path / "normal.png", masks=[str(tmp_path / "normal_mask.png")])[0]
    assert "mask is empty" in given["error"]  # given explicitly, an empty mask is still a mistake


def test_alpha_masks_and_cmyk_images(tmp_path):
    from breastai.data.io import load_image, load_mask

    lesion = np.zeros((40, 50), bool)
    lesion[10:20, 15:30] = True
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 3] = lesion * 255  # drawn in black on a transparent layer
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha_mask.png")
    opaque = np.zeros((40, 50, 4), np.uint8)
    opaque[..., 3] = 255  # opaque black background, white lesion
    opaque[lesion, :3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque_mask.png")
    white_bg = np.full((40, 50, 4), 255, np.uint8)
    white_bg[..., 3] = lesion * 255  # white everywhere, but only the lesion visible
    Image.fromarray(white_bg, "RGBA").save(tmp_path / "white_mask.png")
    for name in ("alpha_mask.png", "opaque_mask.png", "white_mask.png"):
        np.testing.assert_array_equal(load_mask(str(tmp_path / name)), lesion, err_msg=name)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB")
    rgb.save(tmp_path / "rgb.png")
    rgb.convert("CMYK").save(tmp_path / "cmyk.tif")
    np.testing.assert_allclose(load_image(tmp_path / "cmyk.tif")[0], load_image(tmp_path / "rgb.png")[0], atol=1e-3)


def test_no_images_leaves_earlier_results_and_outputs_keep_the_umask(ckpt, sample, tmp_path, capsys):
    import os

    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert _cli(["predict", "--checkpoint", str(ckpt), str(sample[0]), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    before = (out / "predictions.csv").read_text()
    maps = sorted(p.name for p in out.rglob("*.npy"))
    assert maps and (out / "predictions.csv").stat().st_mode & 0o777 == 0o644
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.rglob("*.npy"))
    (tmp_path / "empty").mkdir()
    assert _cli(["predict", "--checkpoint", str(ckpt), str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "no images found" in capsys.readouterr().err
    assert (out / "predictions.csv").read_text() == before and sorted(p.name for p in out.rglob("*.npy")) == maps
    assert len(list((out / "saliency").iterdir())) == 1
    with pytest.raises(SystemExit):
        _cli(["predict", "--checkpoint", str(ckpt), str(sample[0]), "--out", str(out), "--tta", "-3"])


def test_one_bare_mask_for_one_image(predictor, sample):
    bare = predictor.predict(sample[0], masks=str(sample[1]))[0]  # as in the README's Python example
    listed = predictor.predict(sample[0], masks=[str(sample[1])])[0]
    assert bare["error"] is None and bare["has_mask"] and bare["probability"] == listed["probability"]
