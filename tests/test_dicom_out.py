"""``predict --dicom-out``: SR, SC and SEG per scored DICOM input, valid, readable, in the source's study."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import predict_cli, real_data
from test_dicom import PHI, write_dicom

from breastai.inference.dicom_writer import DicomObjects
from breastai.inference.writers import PredictionTables, SaliencyMaps, run_predict

hd = pytest.importorskip("highdicom")


def dciodvfy_errors(path: Path) -> tuple[list[str], list[str]]:
    """dciodvfy's error and warning lines for one file (the test skips when dciodvfy is not installed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools: apt-get install -y dicom3tools)")
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=600)
    lines = (res.stdout + res.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def _mg(path: Path) -> Path:
    """A 12-bit MG image with a dense blob, patient identifiers, a study, spacing and orientation."""
    rr, cc = np.mgrid[:200, :160]
    px = (800 + 2000 * np.exp(-((rr - 100) ** 2 + (cc - 40) ** 2) / 400)).astype(np.uint16)
    return write_dicom(path, px, bits_stored=12, ImageLaterality="L", PatientOrientation=["A", "R"],
                       PixelSpacing=[0.1, 0.1])


def _sr_values(sr) -> dict[str, float | str]:
    """Probability, its SD and the finding of an SR read back with highdicom."""
    group = sr.content.get_image_measurement_groups()[0]
    out: dict[str, float | str] = {}
    for m in group.get_measurements():
        out["uncertainty" if m.derivation is not None else "probability"] = m.value
    finding = [q for q in group.get_qualitative_evaluations() if q.name.value == "121073"]
    out["finding"] = finding[0].value.meaning
    return out


@pytest.fixture(scope="module")
def synthetic_run(ckpt, sample, tmp_path_factory):
    """``predict --dicom-out`` on a synthetic MG DICOM (with a box) and a PNG, run twice."""
    tmp = tmp_path_factory.mktemp("dicomout")
    dcm = _mg(tmp / "mg.dcm")
    runs = []
    for k in range(2):
        argv = ["predict", "--checkpoint", str(ckpt), str(dcm), str(sample[0]), "--out", str(tmp / f"out{k}"),
                "--dicom-out", str(tmp / "dicom"), "--box", "30,90,49,109", "--box", "10,10,30,30", "--tta", "3",
                "--device", "cpu"]
        assert predict_cli(argv) == 0
        runs.append(json.loads((tmp / f"out{k}" / "predictions.json").read_text()))
    return tmp, dcm, runs


def test_objects_written_valid_and_in_the_source_study(synthetic_run):
    tmp, dcm, runs = synthetic_run
    src = pydicom.dcmread(dcm)
    rec, png = runs[0]["records"]
    assert rec["error"] is None and png["error"] is None
    files = {k: tmp / "dicom" / rec[f"dicom_{k}"] for k in ("sr", "sc", "seg")}
    for path in files.values():
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
        assert ds.PatientName == src.PatientName
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    # SR: probability as in predictions.csv, the SD of the TTA, the label, unverified, references.
    sr = hd.sr.srread(files["sr"])
    assert sr.VerificationFlag == "UNVERIFIED"
    row = next(csv.DictReader(open(tmp / "out0" / "predictions.csv")))
    values = _sr_values(sr)
    assert abs(values["probability"] - float(row["probability"])) <= 1e-6
    assert abs(values["uncertainty"] - float(row["uncertainty"])) <= 1e-6
    assert values["finding"] == ("Malignant" if rec["label"] == "malignant" else "Benign")
    refs = {r.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
            for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    seg = hd.seg.segread(files["seg"])
    assert refs == {src.SOPInstanceUID, seg.SOPInstanceUID}
    roi = sr.content.get_planar_roi_measurement_groups()[0]
    sizes = {m.name.meaning: (m.value, m.unit.value) for m in roi.get_measurements()}
    assert sizes["Area"] == pytest.approx((20 * 20 * 0.01, "mm2"))  # the box: 20 x 20 pixels of 0.1 mm
    assert sizes["Diameter"] == pytest.approx((np.hypot(2.0, 2.0), "mm"))
    algo = [i for i in sr.ContentSequence[-1].ContentSequence[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111001"]
    assert algo and algo[0].TextValue == "breastai small_cnn"
    # SEG: the box on the source's grid; SC: the overlay in the source's geometry.
    mask = seg.get_pixels_by_source_instance([src.SOPInstanceUID], combine_segments=True)
    expected = np.zeros((1, 200, 160), bool)
    expected[0, 90:110, 30:50] = True
    assert np.array_equal(mask > 0, expected)
    sc = hd.imread(files["sc"])
    assert sc.pixel_array.shape == (200, 160, 3)
    # Non-DICOM input: no objects, one note.
    assert png["dicom_sr"] is None and png["dicom_sc"] is None and png["dicom_seg"] is None
    assert len(runs[0]["run"]["notes"]) == 1 and "not DICOM" in runs[0]["run"]["notes"][0]


def test_objects_pass_dciodvfy(synthetic_run):
    tmp, _, runs = synthetic_run
    rec = runs[0]["records"][0]
    for k in ("sr", "sc", "seg"):
        errors, _ = dciodvfy_errors(tmp / "dicom" / rec[f"dicom_{k}"])
        assert errors == [], (k, errors)


def test_rerun_makes_new_uids_and_tables_stay_redacted(synthetic_run):
    tmp, dcm, runs = synthetic_run
    uids = []
    for run in runs:
        rec = run["records"][0]
        uids.append({(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in
                     (pydicom.dcmread(tmp / "dicom" / rec[f"dicom_{k}"]) for k in ("sr", "sc", "seg"))})
    series = [{s for s, _ in u} for u in uids]
    instances = [{i for _, i in u} for u in uids]
    assert len(series[0]) == 3 and not series[0] & series[1] and not instances[0] & instances[1]
    for k in range(2):
        texts = [(tmp / f"out{k}" / "predictions.csv").read_text(), (tmp / f"out{k}" / "predictions.json").read_text()]
        for text in texts:
            for secret in (*PHI.values(), pydicom.dcmread(dcm).SOPInstanceUID, "Doe"):
                assert secret not in text
            assert "_path" not in text and "_mask_origin" not in text


def test_abort_removes_this_runs_objects(predictor, ckpt, tmp_path):
    dcm = _mg(tmp_path / "mg.dcm")

    class Fails:
        def start(self, out, run_id): pass
        def write_item(self, index, record, maps): raise RuntimeError("disk full")
        def finish(self, records, run): pass
        def abort(self): pass

    objects = DicomObjects(tmp_path / "dicom", predictor, ckpt)
    with pytest.raises(RuntimeError):
        run_predict(predictor, [dcm], tmp_path / "out", saliency="gradcam", writers=[objects, Fails()])
    assert list((tmp_path / "dicom").iterdir()) == []


def test_real_mammograms_give_valid_objects(ckpt, tmp_path):
    """The 8 real mammograms, a lesion box from a mask provider: every object valid and read back."""
    from breastai.inference.predictor import Predictor

    folder = real_data("dicom-mg")
    files = sorted(str(p) for p in folder.iterdir())

    def centre_box(item, image, meta):  # on the reader's (breast-cropped) grid: inside the breast
        m = np.zeros(image.shape[-2:], bool)
        h, w = m.shape
        m[h // 2 - h // 10: h // 2 + h // 10, w // 4: w // 4 + w // 8] = True
        return m

    pred = Predictor.from_checkpoint(ckpt, device="cpu", mask_providers=[centre_box])
    writers = [SaliencyMaps(), DicomObjects(tmp_path / "dicom", pred, ckpt, saliency="gradcam"), PredictionTables()]
    records, _ = run_predict(pred, files, tmp_path / "out", saliency="gradcam", tta=2, writers=writers)
    assert [r["error"] for r in records if r["error"]] == []
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    counts = {"errors": 0, "warnings": 0}
    for path, rec in zip(files, records):
        src = pydicom.dcmread(path, stop_before_pixels=True)
        for k in ("sr", "sc", "seg"):
            obj = tmp_path / "dicom" / rec[f"dicom_{k}"]
            errors, warnings = dciodvfy_errors(obj) if shutil.which("dciodvfy") else ([], [])
            assert errors == [], (Path(path).name, k, errors)
            counts["warnings"] += len(warnings)
            ds = hd.imread(obj) if k == "sc" else (hd.seg.segread(obj) if k == "seg" else hd.sr.srread(obj))
            assert ds.StudyInstanceUID == src.StudyInstanceUID
        sr = hd.sr.srread(tmp_path / "dicom" / rec["dicom_sr"])
        assert abs(_sr_values(sr)["probability"] - float(rows[rec["id"]]["probability"])) <= 1e-6
        seg = hd.seg.segread(tmp_path / "dicom" / rec["dicom_seg"])
        assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    print(f"dciodvfy on {3 * len(files)} objects: 0 errors, {counts['warnings']} warnings")


def test_no_uid_reaches_the_log(ckpt, tmp_path, caplog):
    """highdicom logs the UIDs of what it builds at INFO; a predict run with --dicom-out must not pass them on."""
    import logging

    from breastai.data.readers.masks import LesionBox
    from breastai.inference.predictor import Predictor

    dcm = _mg(tmp_path / "mg.dcm")
    src = pydicom.dcmread(dcm)
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    caplog.set_level(logging.DEBUG)
    records, run = run_predict(pred, [dcm], tmp_path / "out", masks=[LesionBox(30, 90, 49, 109)], saliency="gradcam",
                               writers=[SaliencyMaps(), DicomObjects(tmp_path / "dicom", pred, ckpt, saliency="gradcam"),
                                        PredictionTables()])
    assert records[0]["error"] is None and run["dicom_out"]["n_objects"] >= 2
    assert src.StudyInstanceUID not in caplog.text and src.SOPInstanceUID not in caplog.text


def _codes(sr) -> dict[str, object]:
    """Concept code value -> the value of the NUM and CODE items in the SR's first measurement group
    (NUM: the number; CODE: the coded value's code value)."""
    group = sr.content.get_image_measurement_groups()[0][0]  # the group's container item
    out: dict[str, object] = {}
    for item in group.ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "NUM":
            out[code] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE":
            out[code] = item.ConceptCodeSequence[0].CodeValue
    return out


def test_seg_and_sizes_without_saliency(ckpt, tmp_path):
    """--saliency none (the archive setting) keeps the SEG and the SR's Area/Diameter: they come from the outline."""
    dcm = _mg(tmp_path / "mg.dcm")
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    assert predict_cli(["predict", "--checkpoint", str(ckpt), str(dcm), "--out", str(out), "--dicom-out", str(dicom),
                        "--box", "30,90,49,109", "--saliency", "none", "--device", "cpu"]) == 0
    (rec,) = json.loads((out / "predictions.json").read_text())["records"]
    assert rec["error"] is None and rec["dicom_sc"] is None and rec["saliency_npy"] is None  # no map, no capture
    assert rec["dicom_sr"] and rec["dicom_seg"]
    seg = hd.seg.segread(dicom / rec["dicom_seg"])
    expected = np.zeros((1, 200, 160), bool)
    expected[0, 90:110, 30:50] = True
    assert np.array_equal(seg.get_pixels_by_source_instance([pydicom.dcmread(dcm).SOPInstanceUID],
                                                            combine_segments=True) > 0, expected)
    sr = hd.sr.srread(dicom / rec["dicom_sr"])
    roi = sr.content.get_planar_roi_measurement_groups()[0]
    sizes = {m.name.meaning: (m.value, m.unit.value) for m in roi.get_measurements()}
    assert sizes["Area"] == pytest.approx((20 * 20 * 0.01, "mm2"))
    assert sizes["Diameter"] == pytest.approx((np.hypot(2.0, 2.0), "mm"))
    refs = {r.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
            for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in refs
    for k in ("sr", "seg"):
        errors, _ = dciodvfy_errors(dicom / rec[f"dicom_{k}"])
        assert errors == [], (k, errors)


@pytest.fixture(scope="module")
def segmented_run(ckpt, seg_ckpt, tmp_path_factory):
    """``predict --segmenter --dicom-out --saliency none`` on an ultrasound DICOM without a lesion and one with."""
    from conftest import blob_image
    from test_dicom import US_SOP

    tmp = tmp_path_factory.mktemp("segdicom")
    empty = write_dicom(tmp / "empty.dcm", blob_image((80, 96), [], seed=3)[0], modality="US", sop=US_SOP)
    lesion = write_dicom(tmp / "lesion.dcm", blob_image((80, 96), [(40, 50, 12)])[0], modality="US", sop=US_SOP,
                         PixelSpacing=[0.1, 0.1])
    out, dicom = tmp / "out", tmp / "dicom"
    assert predict_cli(["predict", "--checkpoint", str(ckpt), "--segmenter", str(seg_ckpt), str(empty), str(lesion),
                        "--out", str(out), "--dicom-out", str(dicom), "--saliency", "none", "--device", "cpu"]) == 0
    records = json.loads((out / "predictions.json").read_text())["records"]
    return tmp, out, dicom, {r["source"].rsplit("/", 1)[-1]: r for r in records}


def test_no_lesion_found_gets_one_sr_saying_so(segmented_run, seg_ckpt):
    from breastai.inference.dicom_objects import LESION_PRESENCE
    from breastai.inference.segment import NO_LESION

    tmp, out, dicom, recs = segmented_run
    rec = recs["empty.dcm"]
    assert rec["label"] == NO_LESION and rec["probability"] is None and rec["error"] is None
    assert rec["dicom_sr"] and rec["dicom_seg"] is None and rec["dicom_sc"] is None
    rows = {r["id"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert rows[rec["id"]]["dicom_sr"] == rec["dicom_sr"]
    src = pydicom.dcmread(tmp / "empty.dcm")
    sr = hd.sr.srread(dicom / rec["dicom_sr"])
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.VerificationFlag == "UNVERIFIED"
    values = _codes(sr)
    # "All algorithms succeeded; without findings", the presence probability, and no probability of cancer or label.
    assert values["111017"] == "111241"
    assert values[LESION_PRESENCE[0]] == pytest.approx(rec["lesion_probability"], abs=1e-6)
    assert values[LESION_PRESENCE[0]] < load_threshold(seg_ckpt)
    assert "111047" not in values and "121073" not in values
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LESION_PRESENCE[1]
    group = sr.content.get_image_measurement_groups()[0][0]
    texts = [(i.ConceptNameCodeSequence[0].CodeValue, i.TextValue) for i in group.ContentSequence
             if i.ValueType == "TEXT"]
    assert ("111001", "breastai small_cnn") in texts and ("111002", "segmenter=unet_small") in texts
    refs = {r.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
            for s in e.ReferencedSeriesSequence for r in s.ReferencedSOPSequence}
    assert refs == {src.SOPInstanceUID}
    errors, _ = dciodvfy_errors(dicom / rec["dicom_sr"])
    assert errors == [], errors


def test_segmenter_outline_gives_seg_and_size_without_saliency(segmented_run):
    tmp, out, dicom, recs = segmented_run
    rec = recs["lesion.dcm"]
    assert rec["mask_source"] == "segmenter" and rec["dicom_seg"] and rec["dicom_sc"] is None
    outline = np.load(out / rec["outline_npy"])
    seg = pydicom.dcmread(dicom / rec["dicom_seg"])
    np.testing.assert_array_equal(seg.pixel_array.astype(bool), outline)
    roi = hd.sr.srread(dicom / rec["dicom_sr"]).content.get_planar_roi_measurement_groups()[0]
    sizes = {m.name.meaning: m.value for m in roi.get_measurements()}
    assert sizes["Area"] == pytest.approx(rec["area_mm2"], rel=1e-4)
    assert sizes["Area"] == pytest.approx(outline.sum() * 0.01)
    assert sizes["Diameter"] == pytest.approx(rec["max_diameter_mm"], rel=1e-4)
    for k in ("sr", "seg"):
        errors, _ = dciodvfy_errors(dicom / rec[f"dicom_{k}"])
        assert errors == [], (k, errors)


def test_resumed_run_counts_the_no_lesion_sr(predictor, ckpt, tmp_path):
    from breastai.inference.segment import NO_LESION

    objects = DicomObjects(tmp_path / "dicom", predictor, ckpt)
    objects.start(tmp_path, "r1")
    objects.restore(0, {"id": "a", "label": NO_LESION, "probability": None, "error": None,
                        "dicom_sr": "r1/00000_a_sr.dcm", "dicom_sc": None, "dicom_seg": None})
    objects.restore(1, {"id": "b", "label": None, "probability": None, "error": "x: unreadable"})
    run: dict = {}
    objects.finish([], run)
    assert run["dicom_out"]["n_objects"] == 1 and "notes" not in run


def load_threshold(path) -> float:
    from breastai.models.checkpoint_io import load_checkpoint

    return load_checkpoint(path).threshold
