"""``breastai ensemble --segmenter-run``: a combination fitted on the outlines the pipeline will get.

A real (tiny) 2-fold segmenter run and two 2-fold classifier runs (lesion crop, whole image) share
one fold column, on bright discs on noise (conftest's ``blob_datalist``: one image in four is
normal). The assertions are about where the outlines come from and what each fold writes; the
classifiers' figures on discs with random labels are not the point.
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import _tiny_config, blob_datalist, seg_config, write_rows

from breastai.engine import auto_outline, ensemble_outlines
from breastai.engine.auto_outline import score_outlined
from breastai.engine.ensemble import build_ensemble
from breastai.engine.ensemble_outlines import OutlineFit
from breastai.engine.run import main as train_main
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.outliner import Outliner

N = 64


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(segmenter run, crop run, whole run, lesion datalist, folder), all on one fold column."""
    folder = tmp_path_factory.mktemp("ens_seg")
    rows = list(csv.DictReader(open(blob_datalist(folder, n=N))))
    for i, r in enumerate(rows):
        r["fold"] = str(i // 4 % 2)
    all_rows = write_rows(folder / "all.csv", rows)
    lesions = write_rows(folder / "lesions.csv", [r for r in rows if r["label"] != "normal"])
    common = ("train.folds=2", "log.tensorboard=false")
    seg = train_main(seg_config(folder, f"data.datalist={all_rows}", "train.epochs=12", "run_name=seg",
                                *common))
    cls = ("data.val_fraction=0.3", "train.epochs=1", "data.classes=[benign,malignant]", *common)
    crop = train_main(_tiny_config(lesions, folder, "run_name=crop", "preprocess.mode=crop", *cls))
    whole = train_main(_tiny_config(lesions, folder, "run_name=whole", "preprocess.mode=whole", *cls))
    return Path(seg["run_dir"]), Path(crop["run_dir"]), Path(whole["run_dir"]), lesions, folder


@contextlib.contextmanager
def _outlines_seen():
    """(case, segmenter checkpoint) of every image the combination's fit had outlined."""
    seen: list[tuple[str, str]] = []
    real = ensemble_outlines.outlined_log_odds

    def spy(members, records, outliners, device, names, per_lesion=None):
        seen.extend((str(r["case_id"]), o.source) for r, o in zip(records, outliners))
        return real(members, records, outliners, device, names, per_lesion)

    mp = pytest.MonkeyPatch()
    mp.setattr(ensemble_outlines, "outlined_log_odds", spy)
    try:
        yield seen
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def built(runs):
    seg, crop, whole, _, folder = runs
    with _outlines_seen() as seen:
        summary = build_ensemble([crop, whole], folder / "ens", combine="stack", n_boot=0, on_outlines=OutlineFit(seg))
    return summary, folder / "ens", seen


def test_each_fold_segmenter_finds_its_held_out_discs(runs):
    """Four discs in a validation part: a threshold on the weakest one's score (0.835) once missed 12 of
    24 held-out discs scored 0.82-0.835; in the middle of the gap to the empty images none is missed."""
    import json

    pooled = json.loads((runs[0] / "cv_summary.json").read_text())["pooled"]
    assert pooled["missed"] == 0 and pooled["false_lesion_rate"] == 0.0


def test_validation_images_are_outlined_by_the_segmenter_that_held_them_out(runs, built):
    seg, *_ = runs
    summary, _, seen = built
    held = {r["case_id"]: r["fold"] for r in summary["oof_predictions"]}
    assert seen and len(seen) < len(held)  # validation parts only, never the held-out folds
    for case, source in seen:
        assert source == str(seg / f"fold{held[case]}" / "best.pt")


def test_each_fold_is_a_pipeline_scored_as_evaluate_auto_outline_scores_it(runs, built):
    seg, _, _, lesions, _ = runs
    summary, ens, _ = built
    rows = list(csv.DictReader(open(lesions)))
    assert summary["config"]["ensemble"]["fitted_on"].startswith("automatic outlines, out of fold")
    for k in (0, 1):
        ckpt = load_checkpoint(ens / f"fold{k}" / "best.pt")
        assert ckpt.is_ensemble and ckpt.is_pipeline and len(ckpt.member_weights) == 2
        assert min(ckpt.member_weights) >= 0 and ckpt.temperature == 1.0
        assert ckpt.config["ensemble"]["fitted_on"] == f"automatic outlines, out of fold ({seg})"
        assert ckpt.metrics["n_val_fitted"] + ckpt.metrics["n_val_no_lesion_found"] > 0
        # The held-out fold again, through the file written (its bundled segmenter): the same scores.
        from breastai.data.frames import read_samples

        part = [r for r in read_samples(str(lesions), ckpt.config["data"], ckpt.classes) if int(r["fold"]) == k]
        outliner = Outliner(ckpt.segmenter, "cpu")
        _, probs, _, out_rows = score_outlined(ckpt, part, outliner, True, "cpu", 0, [r["case_id"] for r in part])
        oof = {r["case_id"]: r for r in summary["oof_predictions"] if r["fold"] == k}
        assert len(oof) == len(part) == sum(1 for r in rows if r["fold"] == str(k))
        for r, p, o in zip(part, probs, out_rows):
            assert oof[r["case_id"]]["probability"] == pytest.approx(float(p), abs=1e-9)
            assert oof[r["case_id"]]["lesion_found"] == bool(o["n_lesions"])
            if not o["n_lesions"]:  # the whole-image member still ranks it
                assert o["scored_on"] == "image" and 0.0 < p < 1.0


def test_a_segmenter_run_on_other_folds_is_refused(runs, tmp_path):
    seg, crop, whole, _, folder = runs
    other = tmp_path / "seg_other"
    other.mkdir()
    text = (seg / "cv_summary.json").read_text().replace('"fold": 0', '"fold": 9')
    (other / "cv_summary.json").write_text(text)
    with pytest.raises(ValueError, match="another fold than the classifiers"):
        build_ensemble([crop, whole], tmp_path / "ens", combine="stack", n_boot=0, on_outlines=OutlineFit(other))


def test_a_fold_checkpoint_predicts_a_new_image_with_no_outline_given(runs, built):
    """The file is a pipeline: ``predict`` outlines with the bundled segmenter and scores with the ensemble."""
    from breastai.inference.predictor import Predictor

    _, _, _, lesions, folder = runs
    _, ens, _ = built
    row = next(r for r in csv.DictReader(open(lesions)) if r["fold"] == "0")
    pred = Predictor.from_checkpoint(ens / "fold0" / "best.pt", device="cpu")
    recs = pred.predict(str(folder / row["image"]))
    assert recs and all(r["error"] is None for r in recs)
    found = [r for r in recs if r["probability"] is not None]
    assert found, "the bundled segmenter finds the disc"
    for r in found:
        assert r["mask_source"] == "segmenter" and 0.0 <= r["probability"] <= 1.0


def test_a_given_mask_is_warned_about_once(runs, built, caplog):
    """The combination was fitted on automatic outlines: a reader's mask is scored, and said to be outside that."""
    from breastai.inference.predictor import Predictor

    _, _, _, lesions, folder = runs
    _, ens, _ = built
    rows = [r for r in csv.DictReader(open(lesions)) if r["fold"] == "0"][:2]
    pred = Predictor.from_checkpoint(ens / "fold0" / "best.pt", device="cpu")
    with caplog.at_level("WARNING", logger="breastai"):
        pred.predict(str(folder / rows[0]["image"]))
    assert not [m for m in caplog.messages if "fitted on automatic outlines" in m]
    with caplog.at_level("WARNING", logger="breastai"):
        recs = pred.predict([str(folder / r["image"]) for r in rows], masks=[str(folder / r["mask"]) for r in rows])
    assert [r["mask_source"] for r in recs] == ["given", "given"] and all(r["probability"] is not None for r in recs)
    told = [m for m in caplog.messages if "fitted on automatic outlines" in m]
    assert len(told) == 1 and "mask" in told[0]


def _blind(ckpt):
    """The pipeline's segmenter with its presence threshold above 1: it finds no lesion anywhere."""
    import copy

    seg = copy.deepcopy(ckpt.segmenter)
    seg.threshold = 1.5
    return seg


def test_an_image_with_no_lesion_found_is_ranked_by_the_whole_image_member(runs, built):
    """evaluate's rule: where nothing is found the whole-image member's own calibrated score ranks
    the image; a classifier with no such member still gives 0 (docs/experiments.md, "The whole image
    beside the lesion crop")."""
    from breastai.data.frames import read_samples
    from breastai.engine.scoring import members_log_odds
    from breastai.models.checkpoint import reads_mask

    _, _, _, lesions, _ = runs
    _, ens, _ = built
    ckpt = load_checkpoint(ens / "fold0" / "best.pt")
    whole = [m for m in ckpt.members if not reads_mask(m)]
    assert len(whole) == 1 and whole[0].config["preprocess"]["mode"] == "whole"
    part = [r for r in read_samples(str(lesions), ckpt.config["data"], ckpt.classes) if int(r["fold"]) == 0][:6]
    names = [r["case_id"] for r in part]
    blind = Outliner(_blind(ckpt), "cpu")
    _, probs, report, rows = score_outlined(ckpt, part, blind, True, "cpu", 0, names)
    c, _ = members_log_odds(whole, [{**r, "mask": None} for r in part], "cpu", names=names)
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-c[:, 0])), atol=1e-9)
    assert [r["scored_on"] for r in rows] == ["image"] * len(part) and all(r["n_lesions"] == 0 for r in rows)
    assert report["outline"]["n_no_lesion_found"] == report["outline"]["n_no_lesion_scored_on_image"] == len(part)
    crop = next(m for m in ckpt.members if m not in whole)
    _, probs, report, _ = score_outlined(crop, part, blind, True, "cpu", 0, names)
    assert (probs == 0.0).all() and report["outline"]["n_no_lesion_scored_on_image"] == 0


def test_predict_gives_an_image_probability_where_no_lesion_is_found(runs, built):
    """predict keeps the "no lesion found" record (no malignancy probability of a lesion) and adds the
    whole-image member's probability of the image: the same as that member predicting alone."""
    from breastai.inference.predictor import Predictor
    from breastai.inference.segment import NO_LESION
    from breastai.models.checkpoint import reads_mask

    _, _, _, lesions, folder = runs
    _, ens, _ = built
    ckpt = load_checkpoint(ens / "fold0" / "best.pt")
    image = str(folder / next(csv.DictReader(open(lesions)))["image"])
    rec, = Predictor.from_state(ckpt, device="cpu", segmenter=_blind(ckpt)).predict(image)
    assert rec["label"] == NO_LESION and rec["probability"] is None and rec["error"] is None
    alone, = Predictor.from_state(next(m for m in ckpt.members if not reads_mask(m)), device="cpu").predict(image)
    assert rec["image_probability"] == pytest.approx(alone["probability"], abs=1e-6)
    # the image's probability of cancer: presence (the no-lesion record's lesion_probability) x that score
    assert rec["cancer_probability"] == pytest.approx(rec["lesion_probability"] * rec["image_probability"], abs=2e-6)
    crop = next(m for m in ckpt.members if m.config["preprocess"]["mode"] == "crop")
    rec, = Predictor.from_state(crop, device="cpu", segmenter=_blind(ckpt)).predict(image)
    assert rec["label"] == NO_LESION and "image_probability" not in rec


@pytest.fixture(scope="module")
def single(runs):
    """Single-split crop and whole-image runs (one seed: one validation part, 8 rows held out as
    split=test) on the lesion images the 2-fold segmenter run held out once each."""
    seg, _, _, lesions, folder = runs
    rows = [{k: v for k, v in r.items() if k != "fold"} for r in csv.DictReader(open(lesions))]
    for i, r in enumerate(rows):
        r["split"] = "test" if i < 8 else ""
    dl = write_rows(folder / "single.csv", rows)
    cls = ("data.val_fraction=0.3", "train.epochs=1", "data.classes=[benign,malignant]", "log.tensorboard=false")
    crop = train_main(_tiny_config(dl, folder, "run_name=crop1", "preprocess.mode=crop", *cls))
    whole = train_main(_tiny_config(dl, folder, "run_name=whole1", "preprocess.mode=whole", *cls))
    return Path(crop["run_dir"]), Path(whole["run_dir"]), seg, folder


def test_single_runs_are_fitted_on_out_of_fold_outlines_and_carry_the_folds_averaged(single, capsys):
    """``breastai ensemble CROP WHOLE --segmenter-run SEG_CV`` with single runs: validation images outlined by
    the fold that held each out, one pipeline whose segmenter is the run's folds averaged, the test rows scored."""
    import json

    from breastai.cli import main

    crop, whole, seg, folder = single
    with _outlines_seen() as seen:
        assert main(["ensemble", str(crop), str(whole), "--segmenter-run", str(seg), "--out", str(folder / "ens1"),
                     "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "fitted on automatic outlines" in out and "folds averaged" in out
    held = {r["case_id"]: r["fold"] for r in json.loads((seg / "cv_summary.json").read_text())["oof_predictions"]}
    val = load_checkpoint(crop / "best.pt").seen_images["val"]
    assert len(seen) == len(val) > 0
    for case, source in seen:
        assert source == str(seg / f"fold{held[case]}" / "best.pt")
    ckpt = load_checkpoint(folder / "ens1" / "best.pt")
    assert ckpt.is_ensemble and ckpt.is_pipeline and ckpt.config["ensemble"]["fitted_on"] == \
        f"automatic outlines, out of fold ({seg})"
    assert ckpt.segmenter.is_ensemble and len(ckpt.segmenter.members) == 2  # the two folds averaged
    summary = json.loads((folder / "ens1" / "summary.json").read_text())
    assert summary["segmenter"] == [str(seg / f"fold{k}" / "best.pt") for k in (0, 1)]
    assert summary["n_val_fitted"] + summary["n_val_no_lesion_found"] == len(val)
    assert ckpt.metrics["test"]["n"] == 8 == summary["test"]["n"]


def test_single_runs_need_a_segmenter_run_that_held_out_their_images(single, tmp_path):
    import json

    crop, whole, seg, _ = single
    other = tmp_path / "seg_half"
    other.mkdir()
    cv = json.loads((seg / "cv_summary.json").read_text())
    cv["oof_predictions"] = [p for p in cv["oof_predictions"] if p["fold"] == 0]
    (other / "cv_summary.json").write_text(json.dumps(cv))
    with pytest.raises(ValueError, match="never held out case"):
        build_ensemble([crop, whole], tmp_path / "ens", n_boot=0, on_outlines=OutlineFit(other))
    assert not (tmp_path / "ens").exists()


def test_several_whole_image_members_are_averaged_where_no_lesion_is_found(runs, built):
    """Two whole-image members (a second seed, here another fold's): ``image_probability`` and evaluate's
    row score are the sigmoid of their calibrated log-odds' mean; the combination's weights stay out."""
    from breastai.data.frames import read_samples
    from breastai.engine.ensemble import ensemble_state
    from breastai.engine.scoring import members_log_odds
    from breastai.inference.predictor import Predictor
    from breastai.inference.segment import NO_LESION

    _, crop, whole, lesions, folder = runs
    pipe = load_checkpoint(built[1] / "fold0" / "best.pt")
    members = [load_checkpoint(crop / "fold0" / "best.pt"), load_checkpoint(whole / "fold0" / "best.pt"),
               load_checkpoint(whole / "fold1" / "best.pt")]
    three = ensemble_state(members, np.array([0.9, 0.2, 0.7]), 0.4, "stack", 0.5, {}, ["c", "w0", "w1"])
    part = [r for r in read_samples(str(lesions), three.config["data"], three.classes) if int(r["fold"]) == 1][:4]
    names = [r["case_id"] for r in part]
    c, _ = members_log_odds(members[1:], [{**r, "mask": None} for r in part], "cpu", names=names)
    expected = 1.0 / (1.0 + np.exp(-c.mean(1)))
    _, probs, _, _ = score_outlined(three, part, Outliner(_blind(pipe), "cpu"), True, "cpu", 0, names)
    np.testing.assert_allclose(probs, expected, atol=1e-9)
    rec, = Predictor.from_state(three, device="cpu", segmenter=_blind(pipe)).predict(str(folder / part[0]["image"]))
    assert rec["label"] == NO_LESION and rec["image_probability"] == pytest.approx(expected[0], abs=1e-6)


def test_calibrating_a_pipeline_scores_local_images_as_a_new_exam_and_maps_the_whole_image_score(runs, built,
                                                                                                  tmp_path):
    """``breastai calibrate`` on a pipeline outlines the local images with its segmenter (not their traced
    masks), and the fitted map also moves ``image_probability`` of an image with no lesion found."""
    from breastai.engine.recalibrate import recalibrate_checkpoint
    from breastai.inference.predictor import Predictor

    _, _, _, lesions, folder = runs
    src = built[1] / "fold0" / "best.pt"
    rows = list(csv.DictReader(open(lesions)))
    calls = []
    real = auto_outline.pipeline_log_odds

    def spy(ckpt, records, outliner, ignore_masks, *args, **kw):
        calls.append((len(records), ignore_masks, outliner.name))
        return real(ckpt, records, outliner, ignore_masks, *args, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(auto_outline, "pipeline_log_odds", spy)
    try:
        rec = recalibrate_checkpoint(src, lesions, tmp_path / "cal.pt", device="cpu")
    finally:
        mp.undo()
    assert calls == [(len(rows), True, "unet_small")]  # the pipeline's segmenter outlines, traced masks unused
    assert rec.n == len(rows)  # every image scored: its lesions, or the whole image where none is found
    new, old = load_checkpoint(tmp_path / "cal.pt"), load_checkpoint(src)
    assert new.is_pipeline and new.recalibration[-1].slope == pytest.approx(rec.slope)
    image = str(folder / rows[0]["image"])
    p_old = Predictor.from_state(old, device="cpu", segmenter=_blind(old)).predict(image)[0]["image_probability"]
    p_new = Predictor.from_state(new, device="cpu", segmenter=_blind(new)).predict(image)[0]["image_probability"]
    z = np.log(p_old / (1 - p_old))
    assert p_new == pytest.approx(1.0 / (1.0 + np.exp(-(rec.slope * z + rec.intercept))), abs=1e-6)


def test_a_breast_with_no_lesion_found_is_ranked_by_its_whole_image_probability(runs, built, tmp_path):
    """predict's breast table takes the whole-image members' score of an image with no lesion found (as
    evaluate's row score does), so a breast where nothing was found still gets a probability."""
    from breastai.inference.predictor import Predictor
    from breastai.inference.writers import run_predict

    _, _, _, lesions, folder = runs
    ckpt = load_checkpoint(built[1] / "fold0" / "best.pt")
    src = list(csv.DictReader(open(lesions)))[:2]
    rows = [{"case_id": f"c{i}", "image": str(folder / r["image"]), "exam": "e1", "laterality": "R",
             "view": ("CC", "MLO")[i], "label": r["label"]} for i, r in enumerate(src)]
    dl = write_rows(tmp_path / "dl.csv", rows)
    records, _ = run_predict(Predictor.from_state(ckpt, device="cpu", segmenter=_blind(ckpt)), [dl],
                             tmp_path / "pred", saliency="none")
    assert [r["label"] for r in records] == ["no lesion found"] * 2
    breast, = list(csv.DictReader(open(tmp_path / "pred" / "breasts.csv")))
    assert (breast["id"], breast["n_images"], breast["n_lesions"]) == ("e1_R", "2", "0")
    assert float(breast["probability"]) == pytest.approx(max(r["image_probability"] for r in records), abs=1e-6)


def test_evaluate_levels_take_a_row_scored_on_the_whole_image():
    from breastai.engine.level_scores import image_scores

    records = [{"case_id": c, "image": f"{c}.png", "exam": "e1", "laterality": "L", "label": "benign"}
               for c in ("a", "b", "c")]
    rows = [{"case_id": "a", "calibrated_logit": 1.5, "label": 0, "n_lesions": 1, "scored_on": "lesion"},
            {"case_id": "b", "calibrated_logit": -0.5, "label": 0, "n_lesions": 0, "scored_on": "image"},
            {"case_id": "c", "calibrated_logit": -30.0, "label": 0, "n_lesions": 0, "scored_on": None}]
    scores = image_scores(records, rows)
    assert [s.log_odds for s in scores] == [1.5, -0.5, None] and [s.n_lesions for s in scores] == [1, 0, 0]


def test_the_whole_image_member_scores_an_image_with_two_lesions_once(runs, built, tmp_path):
    """Two lesions found in one image: the crop member scores each outline, the whole-image member the
    image once; each record is what scoring that lesion's outline alone gives, map included."""
    from conftest import blob_image
    from PIL import Image

    from breastai.inference.predictor import Predictor

    _, ens, _ = built
    pred = Predictor.from_checkpoint(ens / "fold0" / "best.pt", device="cpu")
    whole = next(m for m in pred.scorer.members if not m.reads_mask)
    img, _ = blob_image((80, 96), [(22, 22, 10), (58, 76, 10)], seed=5)
    Image.fromarray(img).save(tmp_path / "two.png")
    calls = []
    real = whole.score_decoded
    whole.score_decoded = lambda *a, **k: calls.append(1) or real(*a, **k)
    recs = pred.predict(str(tmp_path / "two.png"), saliency="gradcam", return_maps=True)
    assert [r["component"] for r in recs] == [1, 2] and len(calls) == 1
    for r in recs:
        alone, = pred.predict(str(tmp_path / "two.png"), masks=[r["lesion_mask"]], saliency="gradcam", return_maps=True)
        assert alone["probability"] == pytest.approx(r["probability"], abs=1e-6)
        np.testing.assert_allclose(alone["saliency_map"], r["saliency_map"], atol=1e-5)
        assert (alone["lesion_mask"] == r["lesion_mask"]).all() and r["has_mask"]


def test_the_no_lesion_sr_carries_the_image_probability(runs, built, tmp_path):
    """predict --dicom-out on a DICOM where nothing is found: the SR says so and gives the image's
    probability of cancer (presence x the whole-image members' score), in a group of its own; dciodvfy
    finds no error."""
    import json

    import highdicom as hd
    from conftest import blob_image, predict_cli
    from test_dicom import US_SOP, write_dicom
    from test_dicom_out import _codes, dciodvfy_errors

    from breastai.models.checkpoint_io import save_checkpoint

    _, ens, _ = built
    ckpt = load_checkpoint(ens / "fold0" / "best.pt")
    ckpt.segmenter = _blind(ckpt)
    pipe = save_checkpoint(tmp_path / "blind.pt", ckpt)
    src = write_dicom(tmp_path / "us.dcm", blob_image((80, 96), [(40, 50, 12)])[0], modality="US", sop=US_SOP)
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    assert predict_cli(["predict", "--checkpoint", str(pipe), str(src), "--out", str(out), "--dicom-out", str(dicom),
                        "--saliency", "none", "--device", "cpu"]) == 0
    rec, = json.loads((out / "predictions.json").read_text())["records"]
    assert rec["probability"] is None and 0.0 < rec["cancer_probability"] <= rec["image_probability"] < 1.0
    sr = hd.sr.srread(dicom / rec["dicom_sr"])
    values = _codes(sr)  # the first group: the lesion search
    assert values["111017"] == "111241" and "111047" not in values  # all algorithms succeeded; without findings
    groups = sr.content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["lesion search", "image"]
    (m,) = groups[1].get_measurements()
    assert m.name.value == "111047" and m.value == pytest.approx(rec["cancer_probability"], abs=1e-6)
    # no impression (benign/malignant): no operating threshold was chosen for this score
    assert "121073" not in {q.name.value for q in groups[1].get_qualitative_evaluations()}
    errors, _ = dciodvfy_errors(dicom / rec["dicom_sr"])
    assert errors == [], errors


def test_two_crop_members_enter_a_mean_fit_as_their_mean_on_one_lesion(monkeypatch):
    """Under tied weights a row's score is the highest over its lesions of the members' mean: two crop
    members that disagree on which lesion is worse must not each contribute their own maximum."""
    from breastai.engine.ensemble_outlines import tied_lesion_mean

    monkeypatch.setattr(auto_outline, "outline_row",
                        lambda rec, outliner, name: (["l1", "l2"] if rec["case_id"] == "a" else [], {}))
    lesion_scores = np.array([[2.0, -1.0, 0.5], [-1.0, 2.0, 0.5]])  # crop, crop seed, whole image
    monkeypatch.setattr(auto_outline, "members_log_odds", lambda members, lesions, device, names: (lesion_scores, None))
    rows = [{"case_id": "a"}, {"case_id": "b"}]
    plain, found = auto_outline.outlined_log_odds([0, 1, 2], rows, [None, None], "cpu", ["a", "b"])
    assert plain[0].tolist() == [2.0, 2.0, 0.5] and found.tolist() == [True, False]  # each member's maximum
    tied, _ = auto_outline.outlined_log_odds([0, 1, 2], rows, [None, None], "cpu", ["a", "b"],
                                             per_lesion=tied_lesion_mean(np.array([True, True, False])))
    assert tied[0].tolist() == [0.5, 0.5, 0.5] and np.isneginf(tied[1]).all()
