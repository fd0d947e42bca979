"""The automatic pipeline: a trained segmenter in front of the classifier at predict and evaluate time.

The segmenter (``seg_ckpt``, conftest) is a real unet_small trained on bright discs on noise; the
classifier is the tiny predict checkpoint, switched to lesion crops (``crop_ckpt``) so that the
outline decides what it sees. Dice bound: the discs are outlined with Dice >= 0.85.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import blob_image, disc, predict_cli, write_rows
from PIL import Image
from test_dicom import US_SOP, write_dicom

from breastai.data.readers.masks import LesionBox
from breastai.data.spacing import Spacing, lesion_spacing
from breastai.inference.predictor import Predictor
from breastai.inference.segment import NO_LESION
from breastai.models.outliner import resolve_segmenter
from breastai.inference.writers import run_predict
from breastai.models.checkpoint import CheckpointError
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint

DICE = 0.85
SIZE = (80, 96)


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def crop_ckpt(ckpt, tmp_path_factory):
    """The tiny classifier reading lesion crops: its score depends on the outline it is given."""
    state = load_checkpoint(ckpt)
    state.config["preprocess"]["mode"] = "crop"
    return save_checkpoint(tmp_path_factory.mktemp("crop") / "crop.pt", state)


@pytest.fixture(scope="module")
def auto(crop_ckpt, seg_ckpt):
    return Predictor.from_checkpoint(crop_ckpt, device="cpu", segmenter=seg_ckpt)


def png(path, lesions, seed=0):
    img, mask = blob_image(SIZE, lesions, seed)
    Image.fromarray(img).save(path)
    return path, mask


def test_a_lesion_is_found_outlined_measured_and_scored_as_its_traced_outline(auto, tmp_path):
    a, truth = png(tmp_path / "a.png", [(40, 50, 12)])
    b, _ = png(tmp_path / "b.png", [(35, 40, 11)], seed=1)
    dl = write_rows(tmp_path / "dl.csv", [{"case_id": "a", "image": a.name, "pixel_size_mm": "0.1"},
                                          {"case_id": "b", "image": b.name, "pixel_size_mm": ""}])
    ra, rb = auto.predict(dl, saliency="gradcam", return_maps=True)
    assert ra["error"] is None and ra["id"] == "a" and ra["component"] == 1
    assert (ra["mask_source"], ra["scored_on"], ra["has_mask"]) == ("segmenter", "lesion", True)
    assert auto.segmenter.threshold <= ra["lesion_probability"] <= 1
    assert dice(ra["lesion_mask"], truth) >= DICE
    # Its size on the stored image, in mm from the datalist's pixel_size_mm; none stated for b.
    assert ra["area_px"] == ra["lesion_mask"].sum()
    assert ra["area_mm2"] == pytest.approx(ra["area_px"] * 0.01) and ra["spacing_source"] == "pixel_size_mm"
    assert ra["max_diameter_mm"] == pytest.approx(ra["max_diameter_px"] * 0.1, rel=1e-4)
    assert 23 < ra["max_diameter_px"] < 28  # a 25-pixel disc, edge to edge
    assert rb["area_px"] > 0 and rb["area_mm2"] is None and rb["max_diameter_mm"] is None and rb["spacing_source"] is None
    # The image's probability of cancer: its presence probability times the lesion's malignancy probability.
    presence = auto.segmenter.outline(*auto.segmenter.read(a)).presence
    assert ra["cancer_probability"] == pytest.approx(presence * ra["probability"], abs=1e-6)
    # Scored exactly as the same outline given as a traced mask would be.
    traced = auto.predict(a, masks=[ra["lesion_mask"]])[0]
    assert traced["mask_source"] == "given" and traced["component"] is None and "cancer_probability" not in traced
    assert traced["probability"] == pytest.approx(ra["probability"], abs=1e-6)


def test_two_lesions_give_two_records_each_scored_on_its_own_outline(auto, tmp_path):
    f, _ = png(tmp_path / "two.png", [(28, 28, 11), (55, 72, 11)], seed=2)
    recs = auto.predict(f, saliency="gradcam", return_maps=True)
    assert [r["id"] for r in recs] == ["two.png_l1", "two.png_l2"] and [r["component"] for r in recs] == [1, 2]
    for r, centre in zip(sorted(recs, key=lambda r: r["lesion_mask"].nonzero()[0].mean()), [(28, 28), (55, 72)]):
        assert dice(r["lesion_mask"], disc(SIZE, centre, 11)) >= DICE
    assert not (recs[0]["lesion_mask"] & recs[1]["lesion_mask"]).any()
    for r in recs:
        assert auto.predict(f, masks=[r["lesion_mask"]])[0]["probability"] == pytest.approx(r["probability"], abs=1e-6)


def test_a_given_mask_or_box_wins_over_the_segmenter(auto, tmp_path):
    f, _ = png(tmp_path / "two.png", [(28, 28, 11), (55, 72, 11)], seed=2)
    first = disc(SIZE, (28, 28), 11)
    by_mask, by_box = auto.predict([f, f], masks=[first, LesionBox(17, 17, 39, 39)])
    assert (by_mask["mask_source"], by_mask["component"], by_mask["area_px"]) == ("given", None, first.sum())
    assert (by_box["mask_source"], by_box["component"], by_box["area_px"]) == ("box", None, None)  # a box is no outline
    assert by_mask["id"] == by_box["id"] == "two.png"


def test_no_lesion_gives_one_no_lesion_record_and_exit_status_0(ckpt, seg_ckpt, tmp_path, capsys):
    f, _ = png(tmp_path / "empty.png", [], seed=3)
    lesion, _ = png(tmp_path / "lesion.png", [(40, 50, 12)])
    out = tmp_path / "out"
    assert predict_cli(["predict", str(f), str(lesion), "--checkpoint", str(ckpt), "--segmenter", str(seg_ckpt), "--out", str(out),
                        "--saliency", "none"]) == 0
    assert "1 image(s) with no lesion found" in capsys.readouterr().out
    rows = {r["id"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    empty, found = rows["empty.png"], rows["lesion.png"]
    assert (empty["label"], empty["probability"], empty["error"], empty["mask_source"]) == (NO_LESION, "", "", "segmenter")
    assert float(empty["lesion_probability"]) < load_checkpoint(seg_ckpt).threshold
    # A whole-image classifier reads no outline: its probability is the image's, and the table says so.
    assert found["scored_on"] == "image" and found["mask_source"] == "segmenter" and float(found["probability"]) >= 0
    assert (out / found["outline_npy"]).is_file() and (out / found["outline_png"]).is_file()
    run = json.loads((out / "predictions.json").read_text())["run"]
    assert run["segmenter"] == str(seg_ckpt) and run["n_no_lesion"] == 1 and run["n_failed"] == 0
    # The site-shift note counts only records scored against the OOD detector: not "no lesion found".
    assert run["n_ood_scored"] == (found["ood_score"] != "") and empty["ood_score"] == ""


@pytest.mark.parametrize("n_scored, n_shifted, n_no_lesion, fires", [
    (10, 5, 0, True), (10, 4, 0, False), (9, 9, 0, False),
    (18, 10, 3, True),  # 10 of 21 records, but of the 18 that carry a score: more than half
    (0, 0, 12, False),  # a checkpoint without a detector
])
def test_site_shift_note_counts_the_records_with_a_score(n_scored, n_shifted, n_no_lesion, fires):
    from breastai.cli.predict import site_shift_note

    run = {"n": n_scored + n_no_lesion, "n_failed": 0, "n_no_lesion": n_no_lesion,
           "n_ood_scored": n_scored, "n_shifted": n_shifted}
    note = site_shift_note(run)
    assert (note is not None) == fires
    if fires:
        assert f"{n_shifted} of {n_scored} scored images" in note and "--threshold-method sensitivity@0.9" in note


def _flipped_cropped_mg(path):
    """A right-breast MG DICOM (the reader crops it to the breast and mirrors it) with a disc lesion."""
    rng = np.random.default_rng(3)
    img = np.zeros((120, 150), np.uint16)
    img[12:108, 60:150] = (rng.random((96, 90)) * 600 + 400).astype(np.uint16)
    lesion = disc(img.shape, (55, 100), 11)
    img[lesion] = 3600
    img[2:8, 2:12] = 4000  # a burnt-in marker the breast crop drops
    write_dicom(path, img, bits_stored=12, WindowCenter=2048, WindowWidth=4096, PixelSpacing=[0.1, 0.12])
    return lesion


def test_flipped_cropped_dicom_outline_map_and_seg_in_its_own_geometry(crop_ckpt, seg_ckpt, tmp_path):
    truth = _flipped_cropped_mg(tmp_path / "mg.dcm")
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    assert predict_cli(["predict", str(tmp_path / "mg.dcm"), "--checkpoint", str(crop_ckpt), "--segmenter", str(seg_ckpt),
                        "--out", str(out), "--dicom-out", str(dicom)]) == 0
    (rec,) = json.loads((out / "predictions.json").read_text())["records"]
    outline = np.load(out / rec["outline_npy"])
    assert outline.shape == truth.shape and outline.dtype == bool and dice(outline, truth) >= DICE
    assert not outline[:, :57].any()  # left of the reader's breast crop: nothing
    smap = np.load(out / rec["saliency_npy"])
    assert smap.shape == truth.shape and smap[:, :57].max() == 0
    assert rec["spacing_source"] == "PixelSpacing" and rec["area_mm2"] == pytest.approx(outline.sum() * 0.012)
    # The SEG of --dicom-out is the segmenter's outline, marked automatic, on the source's grid.
    seg = pydicom.dcmread(dicom / rec["dicom_seg"])
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    np.testing.assert_array_equal(seg.pixel_array.astype(bool), outline)


def test_ultrasound_region_calibration_gives_mm(auto, tmp_path):
    from pydicom.dataset import Dataset

    img, _ = blob_image(SIZE, [(40, 50, 12)])
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0, region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 0, 0, 95, 79
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.01, 0.02  # cm per pixel: 0.1 mm across, 0.2 mm down
    f = write_dicom(tmp_path / "us.dcm", img, modality="US", sop=US_SOP, SequenceOfUltrasoundRegions=[region])
    (rec,) = auto.predict(f, saliency="gradcam", return_maps=True)
    assert rec["spacing_source"] == "SequenceOfUltrasoundRegions"
    assert rec["area_mm2"] == pytest.approx(rec["area_px"] * 0.02)
    rows, cols = np.nonzero(rec["lesion_mask"])
    # Edge to edge: the disc's height in 0.2 mm pixels dominates its 0.1 mm wide extent.
    assert 0.2 * (rows.max() - rows.min() + 1) <= rec["max_diameter_mm"] <= 0.2 * (rows.max() - rows.min() + 1) * 1.05


def test_spacing_sources_in_order_and_never_guessed():
    from pydicom.dataset import Dataset

    mask = np.zeros((50, 60), bool)
    mask[20:30, 40:50] = True

    def region(x0, x1, dx, units=3):
        r = Dataset()
        r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x0, 0, x1, 49
        r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection = units, 3
        r.PhysicalDeltaX, r.PhysicalDeltaY = dx, 0.01
        return r

    ds = Dataset()
    assert lesion_spacing(ds, mask) is None and lesion_spacing(None, mask) is None
    assert lesion_spacing(None, mask, "0.08") == Spacing(0.08, 0.08, "pixel_size_mm")
    assert lesion_spacing(None, mask, "") is None and lesion_spacing(None, mask, "-1") is None
    ds.SequenceOfUltrasoundRegions = [region(0, 29, 0.02), region(30, 59, 0.03)]  # the lesion is in the second
    assert lesion_spacing(ds, mask, "0.08") == Spacing(0.1, 0.3, "SequenceOfUltrasoundRegions")
    ds.SequenceOfUltrasoundRegions = [region(0, 59, 0.02), region(30, 59, 0.03)]  # two that disagree: none
    assert lesion_spacing(ds, mask) is None
    ds.SequenceOfUltrasoundRegions = [region(0, 59, 0.02, units=4)]  # seconds across (M-mode, Doppler): none
    assert lesion_spacing(ds, mask) is None
    ds.ImagerPixelSpacing = [0.085, 0.085]
    assert lesion_spacing(ds, mask) == Spacing(0.085, 0.085, "ImagerPixelSpacing")
    ds.PixelSpacing = [0.07, 0.07]
    assert lesion_spacing(ds, mask) == Spacing(0.07, 0.07, "PixelSpacing")


def test_wrong_checkpoint_kinds_are_refused(ckpt, seg_ckpt, tmp_path, capsys):
    from breastai.cli import main

    with pytest.raises(CheckpointError, match="segmentation checkpoint .* give it as --segmenter"):
        Predictor.from_checkpoint(seg_ckpt, device="cpu")
    with pytest.raises(CheckpointError, match="classifier checkpoint .* give it as --checkpoint"):
        Predictor.from_checkpoint(ckpt, device="cpu", segmenter=ckpt)
    f, _ = png(tmp_path / "a.png", [(40, 50, 12)])
    assert predict_cli(["predict", str(f), "--checkpoint", str(seg_ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "give it as --segmenter and a classifier checkpoint as --checkpoint" in capsys.readouterr().err
    assert predict_cli(["predict", str(f), "--checkpoint", str(ckpt), "--segmenter", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "outlines nothing: give it as --checkpoint" in capsys.readouterr().err
    dl = write_rows(tmp_path / "dl.csv", [{"image": f.name, "label": "benign"}])
    # evaluate measures a segmenter on its own outlines (tests/test_seg_evaluate.py): it needs traced masks
    assert main(["evaluate", "--checkpoint", str(seg_ckpt), "--data", str(dl), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "dl.csv, row 2" in err and "no traced mask" in err
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(dl), "--out", str(tmp_path / "e"),
                 "--auto-outline"]) == 2
    assert "--auto-outline needs --segmenter" in capsys.readouterr().err


def test_a_pipeline_checkpoint_brings_its_segmenter(crop_ckpt, seg_ckpt, tmp_path):
    from breastai.engine.bundle import bundle_pipeline

    pipe = save_checkpoint(tmp_path / "pipe.pt", bundle_pipeline(load_checkpoint(crop_ckpt), load_checkpoint(seg_ckpt)))
    f, truth = png(tmp_path / "a.png", [(40, 50, 12)])
    (rec,) = Predictor.from_checkpoint(pipe, device="cpu").predict(f, saliency="gradcam", return_maps=True)
    assert (rec["mask_source"], rec["component"]) == ("segmenter", 1) and dice(rec["lesion_mask"], truth) >= DICE
    # The one place the segmenter is chosen: the one given, else the checkpoint's own, else none.
    assert resolve_segmenter(None, load_checkpoint(pipe)).source == "the bundled segmenter"
    assert resolve_segmenter(str(seg_ckpt), load_checkpoint(pipe)).source == str(seg_ckpt)
    assert resolve_segmenter(None, load_checkpoint(crop_ckpt)) is None


def test_evaluate_the_automatic_pipeline_against_traced_outlines(crop_ckpt, seg_ckpt, tmp_path):
    from breastai.engine.evaluate import evaluate_checkpoint

    rows = []
    for i, (r, c) in enumerate([(30, 30), (40, 60), (50, 40), (35, 70), (45, 35), (30, 50)]):
        f, mask = png(tmp_path / f"l{i}.png", [(r, c, 11)], seed=10 + i)
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"l{i}_mask.png")
        rows.append({"case_id": f"l{i}", "image": f.name, "mask": f"l{i}_mask.png", "label": ("benign", "malignant")[i % 2]})
    png(tmp_path / "none.png", [], seed=3)
    rows.append({"case_id": "none", "image": "none.png", "mask": "", "label": "malignant"})
    dl = write_rows(tmp_path / "dl.csv", rows)

    auto = evaluate_checkpoint(crop_ckpt, dl, tmp_path / "auto", device="cpu", n_boot=50, segmenter=seg_ckpt,
                               ignore_masks=True)
    o = auto["outline"]
    assert (o["n_outlined"], o["n_lesions_scored"], o["n_no_lesion_found"], o["n_no_lesion_positive"]) == (7, 6, 1, 1)
    assert o["n_lesion"] == 6 and o["dice_mean"] >= DICE and o["missed"] == 0 and o["traced_masks"] == "ignored"
    table = {r["case_id"]: r for r in csv.DictReader(open(tmp_path / "auto" / "predictions.csv"))}
    assert float(table["none"]["probability"]) == 0.0 and table["none"]["n_lesions"] == "0"
    assert {r["mask_source"] for r in table.values()} == {"segmenter"} and float(table["l0"]["dice"]) >= DICE
    # The OOD score of each scored row is its lesion's; a row where nothing was found has none.
    assert table["none"]["ood_score"] == "" and all(float(table[f"l{i}"]["ood_score"]) > 0 for i in range(6))
    assert auto["ood_flagged"] == pytest.approx(np.mean([float(table[f"l{i}"]["ood_score"]) > 1 for i in range(6)]))
    # Without --auto-outline the traced masks are scored; only the row without one is outlined.
    mixed = evaluate_checkpoint(crop_ckpt, dl, tmp_path / "mixed", device="cpu", n_boot=50, segmenter=seg_ckpt)
    assert mixed["outline"]["n_outlined"] == 1 and mixed["outline"]["traced_masks"] == "used where present"
    given = {r["case_id"]: r for r in csv.DictReader(open(tmp_path / "mixed" / "predictions.csv"))}
    assert given["l0"]["mask_source"] == "given" and given["none"]["mask_source"] == "segmenter"
    traced = Predictor.from_checkpoint(crop_ckpt, device="cpu").predict(tmp_path / "l0.png", masks=[str(tmp_path / "l0_mask.png")])
    assert float(given["l0"]["probability"]) == pytest.approx(traced[0]["probability"], abs=1e-5)


def test_evaluate_auto_outline_measures_lesion_free_images_outside_the_malignancy_figures(crop_ckpt, seg_ckpt, tmp_path):
    """Rows labelled ``normal`` (BUSI's lesion-free images, empty masks) are outlined and scored like any
    row: they give lesion presence (AUC against the lesion images, false lesions) and how many the
    pipeline calls positive, and stay out of the benign/malignant AUC."""
    from breastai.engine.evaluate import evaluate_checkpoint

    rows = []
    for i, (r, c) in enumerate([(30, 30), (40, 60), (50, 40), (35, 70)]):
        f, mask = png(tmp_path / f"l{i}.png", [(r, c, 11)], seed=10 + i)
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"l{i}_mask.png")
        rows.append({"case_id": f"l{i}", "image": f.name, "mask": f"l{i}_mask.png", "label": ("benign", "malignant")[i % 2]})
    for i in range(3):
        f, mask = png(tmp_path / f"n{i}.png", [], seed=20 + i)
        Image.fromarray(mask.astype(np.uint8)).save(tmp_path / f"n{i}_mask.png")
        rows.append({"case_id": f"n{i}", "image": f.name, "mask": f"n{i}_mask.png" if i else "", "label": "normal"})
    dl = write_rows(tmp_path / "dl.csv", rows)
    rep = evaluate_checkpoint(crop_ckpt, dl, tmp_path / "ev", device="cpu", n_boot=0, segmenter=seg_ckpt,
                              ignore_masks=True)
    assert (rep["n"], rep["n_pos"]) == (4, 2)  # the malignancy figures: lesion images only
    o = rep["outline"]
    assert (o["n_lesion"], o["n_normal"], o["missed"], o["false_lesion_rate"], o["presence_auc"]) == (4, 3, 0, 0.0, 1.0)
    f = o["lesion_free"]
    assert (f["n"], f["given_a_lesion"], f["scored_on_image"], f["called_positive"]) == (3, 0, 0, 0)
    assert f["threshold"] == pytest.approx(load_checkpoint(crop_ckpt).threshold)
    # Malignant against benign and lesion-free images, by probability and by presence x probability
    # (the lesion-free images score 0 here: no lesion found and no whole-image member).
    y = np.array([0, 1, 0, 1, 0, 0, 0])
    table0 = {r["case_id"]: float(r["probability"]) for r in csv.DictReader(open(tmp_path / "ev" / "predictions.csv"))}
    p = np.array([table0[c] for c in ("l0", "l1", "l2", "l3", "n0", "n1", "n2")])
    from breastai.reporting.metrics import roc_auc
    assert f["auc_all_images"] == pytest.approx(roc_auc(y, p))
    assert 0.0 <= f["auc_all_images_cancer_probability"] <= 1.0
    table = {r["case_id"]: r for r in csv.DictReader(open(tmp_path / "ev" / "predictions.csv"))}
    assert len(table) == 7 and {table[f"n{i}"]["label"] for i in range(3)} == {"normal"}
    assert all(float(table[f"n{i}"]["probability"]) == 0.0 and table[f"n{i}"]["n_lesions"] == "0" for i in range(3))
    # Without --auto-outline a "normal" row is no class of this classifier; one with a lesion traced is a mistake.
    with pytest.raises(Exception, match="unknown label 'normal'"):
        evaluate_checkpoint(crop_ckpt, dl, tmp_path / "e2", device="cpu", segmenter=seg_ckpt)
    rows[-1]["mask"] = "l0_mask.png"
    bad = write_rows(tmp_path / "bad.csv", rows)
    with pytest.raises(Exception, match="n2.*labelled 'normal' but its traced mask holds a lesion"):
        evaluate_checkpoint(crop_ckpt, bad, tmp_path / "e3", device="cpu", segmenter=seg_ckpt, ignore_masks=True)


def test_evaluate_warns_when_the_segmenter_trained_on_the_evaluation_images(crop_ckpt, seg_ckpt, tmp_path, caplog):
    """The classifier's overlap check does not cover the segmenter (a pipeline's segmenters averaged over
    folds have trained on images its classifier never saw): evaluating on the segmenter's own training
    datalist says so, and metrics.json counts them."""
    from breastai.engine.evaluate import evaluate_checkpoint

    own = Path(seg_ckpt).parents[2] / "dl.csv"  # conftest's seg_config: the datalist beside runs/
    n = len(list(csv.DictReader(open(own))))
    with caplog.at_level("WARNING", logger="breastai"):
        rep = evaluate_checkpoint(crop_ckpt, own, tmp_path / "ev", device="cpu", n_boot=0, segmenter=seg_ckpt,
                                  ignore_masks=True)
    o = rep["outline"]
    assert o["n_seen_in_segmenter_training"] + o["n_seen_in_segmenter_validation"] == n
    assert any("the segmenter" in m and "not an independent test" in m for m in caplog.messages)
    fresh = evaluate_checkpoint(crop_ckpt, _lesion_datalist(tmp_path), tmp_path / "ev2", device="cpu", n_boot=0,
                                segmenter=seg_ckpt, ignore_masks=True)
    assert (fresh["outline"]["n_seen_in_segmenter_training"], fresh["outline"]["n_seen_in_segmenter_validation"]) == (0, 0)


def _lesion_datalist(tmp_path):
    rows = []
    for i, (r, c) in enumerate([(30, 30), (40, 60), (50, 40), (35, 70)]):
        f, mask = png(tmp_path / f"f{i}.png", [(r, c, 11)], seed=40 + i)
        rows.append({"case_id": f"f{i}", "image": f.name, "label": ("benign", "malignant")[i % 2]})
    return write_rows(tmp_path / "fresh.csv", rows)


def test_outlines_are_removed_when_the_run_fails(auto, tmp_path):
    f, _ = png(tmp_path / "a.png", [(40, 50, 12)])

    class Boom:
        def start(self, out, run_id):
            pass

        def write_item(self, index, record, maps):
            raise RuntimeError("disk full")

        def finish(self, records, run):
            pass

        def abort(self):
            pass

    from breastai.inference.writers import OutlineMaps

    with pytest.raises(RuntimeError, match="disk full"):
        run_predict(auto, [f], tmp_path / "out", writers=[OutlineMaps(), Boom()])
    assert not any((tmp_path / "out" / "outlines").glob("*/*.npy"))


def _breast_datalist(tmp_path):
    """e1 (four images): L has two lesions on its CC and nothing on its MLO, R nothing at all; e2: one lesion
    a side; e3 L: a film with two traced findings (two rows, one file)."""
    png(tmp_path / "two.png", [(28, 28, 11), (55, 72, 11)], seed=2)
    png(tmp_path / "one.png", [(40, 50, 12)])
    png(tmp_path / "other.png", [(35, 40, 11)], seed=1)
    film, _ = png(tmp_path / "film.png", [(28, 28, 11), (55, 72, 11)], seed=2)
    for k, centre in enumerate([(28, 28), (55, 72)]):
        Image.fromarray(disc(SIZE, centre, 11).astype(np.uint8) * 255).save(tmp_path / f"film_m{k}.png")
    for name in ("lmlo.png", "rcc.png", "rmlo.png"):
        png(tmp_path / name, [], seed=3)
    rows = [("a", "two.png", "", "e1", "L", "CC", "malignant"), ("b", "lmlo.png", "", "e1", "L", "MLO", "benign"),
            ("c", "rcc.png", "", "e1", "R", "CC", "benign"), ("d", "rmlo.png", "", "e1", "R", "MLO", "benign"),
            ("e", "one.png", "", "e2", "L", "CC", "benign"), ("f", "other.png", "", "e2", "R", "CC", "malignant"),
            ("g1", "film.png", "film_m0.png", "e3", "L", "CC", "benign"),
            ("g2", "film.png", "film_m1.png", "e3", "L", "CC", "malignant")]
    keys = ("case_id", "image", "mask", "exam", "laterality", "view", "label")
    return write_rows(tmp_path / "dl.csv", [dict(zip(keys, r)) for r in rows])


def test_level_tables_count_images_and_lesions_and_agree_with_evaluate(crop_ckpt, seg_ckpt, auto, tmp_path):
    from test_predict_stream import Flaky

    from breastai.engine.evaluate import evaluate_checkpoint
    from breastai.inference.writers import default_writers

    dl = _breast_datalist(tmp_path)
    records, run = run_predict(auto, [dl], tmp_path / "pred", saliency="none",
                               writers=[Flaky(), *default_writers("none")])
    assert all(r["error"] is None for r in records)
    prob = {r["id"]: r["probability"] for r in records}
    assert [r["id"] for r in records if r["label"] == NO_LESION] == ["b", "c", "d"] and {"a_l1", "a_l2"} <= set(prob)
    breasts = {b["id"]: b for b in csv.DictReader(open(tmp_path / "pred" / "breasts.csv"))}
    left, right, film = breasts["e1_L"], breasts["e1_R"], breasts["e3_L"]
    # Two lesion records of one image and an image without a lesion: 2 images, 2 lesions, the worse lesion's score.
    assert (left["members"], left["n_images"], left["n_lesions"]) == ("a_l1;a_l2;b", "2", "2")
    assert float(left["probability"]) == pytest.approx(max(prob["a_l1"], prob["a_l2"]), abs=1e-6)
    assert left["driver"] == max(("a_l1", "a_l2"), key=prob.get)
    # Nothing found in the breast: an explicit outcome, no probability.
    assert (right["n_images"], right["n_lesions"], right["label"], right["probability"], right["log_odds"],
            right["driver"]) == ("2", "0", NO_LESION, "", "", "")
    assert (film["n_images"], film["n_lesions"]) == ("1", "2")  # two traced findings of one film
    exams = {e["id"]: e for e in csv.DictReader(open(tmp_path / "pred" / "exams.csv"))}
    assert (exams["e1"]["n_images"], exams["e1"]["n_lesions"]) == ("4", "2")
    assert run["levels"]["breast"]["n_no_lesion"] == 1 and run["levels"]["exam"]["n_no_lesion"] == 0

    # Resumed after the first input (two records), the images are counted as an uninterrupted run counts them.
    flaky = Flaky()
    flaky.fail_at = 2
    with pytest.raises(RuntimeError, match="disk full"):
        run_predict(auto, [dl], tmp_path / "resumed", saliency="none", writers=[flaky, *default_writers("none")])
    run_predict(auto, [dl], tmp_path / "resumed", saliency="none", resume=True,
                writers=[Flaky(), *default_writers("none")])
    for name in ("breasts.csv", "exams.csv"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "pred" / name).read_text()

    # evaluate at the breast level through the same pipeline: the same breasts, images, lesions and scores.
    rep = evaluate_checkpoint(crop_ckpt, dl, tmp_path / "eval", device="cpu", n_boot=20, level="breast",
                              segmenter=seg_ckpt)
    table = {r["case_id"]: r for r in csv.DictReader(open(tmp_path / "eval" / "predictions.csv"))}
    assert set(table) == set(breasts) and rep["n_images"] == 7 and rep["n_lesions"] == 6
    for bid, b in breasts.items():
        assert (table[bid]["n_images"], table[bid]["n_lesions"]) == (b["n_images"], b["n_lesions"])
        if b["probability"]:
            assert float(table[bid]["probability"]) == pytest.approx(float(b["probability"]), abs=1e-5)
    # evaluate needs a number for every breast: nothing found scores 0 (its documented rule), a negative call.
    assert float(table["e1_R"]["probability"]) < 1e-12 and table["e1_R"]["predicted"] == "benign"
