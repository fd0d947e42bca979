"""Ensembles: the combiner fit, fold-by-fold building from CV runs, and predict/evaluate with the result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.calibration import calibrated_logit
from breastai.engine.ensemble import build_ensemble, fit_combiner
from breastai.engine.run import main as train_main


def test_stack_weights_follow_the_informative_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = (2 * y - 1) * 2.0 + rng.normal(0, 1.5, y.size)  # separates the classes
    noise = rng.normal(0, 2.0, y.size)  # says nothing
    w, b = fit_combiner(np.stack([good, noise], 1), y, "stack")
    assert w[0] > 0.5 and w[1] < 0.1 * w[0]
    assert (w >= 0).all() and abs(b) < 0.5


def test_mean_ties_the_weights_and_never_turns_a_member_around():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    anti = -(2 * y - 1) * 1.0 + rng.normal(0, 1, y.size)  # pointing the wrong way
    w, _ = fit_combiner(np.stack([anti, anti], 1), y, "mean")
    assert w[0] == w[1] and w[0] == 0.0, "a negative weight is clipped to zero, not used"
    w, _ = fit_combiner(np.stack([-anti, -anti + 0.1], 1), y, "mean")
    assert w[0] == pytest.approx(w[1]) and w[0] > 0


def test_combiner_refuses_bad_input():
    with pytest.raises(ValueError, match="one class"):
        fit_combiner(np.zeros((5, 2)), np.ones(5))
    with pytest.raises(ValueError, match="unknown combine"):
        fit_combiner(np.zeros((4, 2)), np.array([0, 1, 0, 1]), "vote")
    with pytest.raises(ValueError, match="do not fit"):
        fit_combiner(np.zeros((4, 2)), np.array([0, 1, 0]))


@pytest.fixture(scope="module")
def cv_runs(synth_datalist, tmp_path_factory):
    """Two 2-fold CV runs on the same folds (crop + mask channel, whole image) and one on other folds."""
    from conftest import _tiny_config

    out = tmp_path_factory.mktemp("ens")
    common = ("train.epochs=1", "train.folds=2", "data.val_fraction=0.25", "log.tensorboard=false")
    crop = train_main(_tiny_config(synth_datalist, out, "run_name=crop", "preprocess.mode=crop", *common))
    whole = train_main(_tiny_config(synth_datalist, out, "run_name=whole", "preprocess.mode=whole", *common))
    other = train_main(_tiny_config(synth_datalist, out, "run_name=other", "seed=7", *common))
    return Path(crop["run_dir"]), Path(whole["run_dir"]), Path(other["run_dir"]), out


@pytest.fixture(scope="module")
def built(cv_runs):
    crop, whole, _, out = cv_runs
    summary = build_ensemble([crop, whole], out / "ens", combine="stack", device="cpu", n_boot=50)
    return summary, out / "ens"


def test_ensemble_cv_output_matches_training_cv(built, cv_runs):
    summary, ens = built
    crop, whole, _, _ = cv_runs
    assert (ens / "cv_summary.json").is_file() and (ens / "oof_predictions.csv").is_file()
    on_disk = json.loads((ens / "cv_summary.json").read_text())
    assert on_disk["pooled_oof_auc"] == pytest.approx(summary["pooled_oof_auc"])
    assert len(summary["folds"]) == 2 and "auc" in summary["mean_sd"]
    # Held-out predictions are exactly w . (members' calibrated log-odds) + b of the members' own
    # held-out logits, fold by fold.
    members = [json.loads((r / "cv_summary.json").read_text())["oof_predictions"] for r in (crop, whole)]
    by_case = [{p["case_id"]: p for p in m} for m in members]
    for fold in range(2):
        ckpt = load_checkpoint(ens / f"fold{fold}" / "best.pt")
        assert ckpt.is_ensemble and all(not m.is_ensemble for m in ckpt.members)
        w, b = np.array(ckpt.member_weights), ckpt.bias
        rows = [p for p in summary["oof_predictions"] if p["fold"] == fold]
        c = np.array([[calibrated_logit(np.array([bc[p["case_id"]]["logit"]]), m.calibration)[0]
                       for bc, m in zip(by_case, ckpt.members)] for p in rows])
        assert np.allclose(c @ w + b, [p["logit"] for p in rows], atol=1e-4)
        assert ckpt.temperature == 1.0 and 0 <= ckpt.threshold <= 1 and ckpt.combine == "stack"


def test_ensemble_checkpoint_predicts_and_evaluates(built, synth_datalist, tmp_path):
    from breastai.data.datalist import read_datalist
    from breastai.engine.evaluate import evaluate_checkpoint
    from breastai.inference.predictor import Predictor

    summary, ens = built
    ckpt = ens / "fold0" / "best.pt"
    state = torch.load(ckpt, weights_only=True)  # self-contained, safe to load
    assert len(state["ensemble"]["members"]) == 2
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    assert pred.crop_mode, "a crop member makes the ensemble need masks"
    rows = read_datalist(synth_datalist)
    held_out = {p["case_id"]: p for p in summary["oof_predictions"] if p["fold"] == 0}
    row = next(r for r in rows if r["case_id"] in held_out)
    rec = pred.predict(row["image"], masks=[row["mask"]], saliency="gradcam", tta=3, return_maps=True)[0]
    assert rec["error"] is None
    # The per-file path (predict) and the batched path (CV scoring) give the same probability.
    assert rec["probability"] == pytest.approx(held_out[row["case_id"]]["probability"], abs=1e-4)
    assert rec["uncertainty"] is not None and rec["uncertainty"] >= 0
    from breastai.data.readers.registry import load_image

    assert rec["saliency_map"].shape == load_image(row["image"])[0].shape[:2]
    assert 0 <= rec["saliency_map"].min() and rec["saliency_map"].max() <= 1
    assert {m.explainer("gradcam").upsample for m in pred.members} == {"bicubic"}
    pred.set_saliency_upsample("bilinear")  # reaches every member's maps
    assert {m.explainer("gradcam").upsample for m in pred.members} == {"bilinear"}
    assert pred.saliency_upsample == "bilinear"
    linear = pred.predict(row["image"], masks=[row["mask"]], saliency="gradcam", return_maps=True)[0]
    assert linear["error"] is None and linear["saliency_map"].shape == rec["saliency_map"].shape
    no_mask = pred.predict(row["image"], saliency="none")[0]
    assert no_mask["probability"] is None and "lesion mask is needed" in no_mask["error"]

    rep = evaluate_checkpoint(ckpt, synth_datalist, tmp_path / "ev", device="cpu", n_boot=50)
    assert rep["n"] == len(rows) and 0 <= rep["auc"] <= 1
    # The members trained and were selected on everything but fold 0's held-out part, and evaluate says so.
    assert rep["n_seen_in_training"] > 0 and rep["n_seen_in_validation"] > 0
    assert rep["n_seen_in_training"] + rep["n_seen_in_validation"] == len(rows) - len(held_out)
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_members_on_other_folds_are_refused(cv_runs, built, tmp_path):
    crop, _, other, _ = cv_runs
    with pytest.raises(ValueError, match="seed"):
        build_ensemble([crop, other], tmp_path / "x", device="cpu")
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble([crop], tmp_path / "y", device="cpu")
    with pytest.raises(ValueError, match="itself an ensemble"):
        build_ensemble([crop, cv_runs[3] / "ens"], tmp_path / "n", device="cpu")
    with pytest.raises(FileNotFoundError, match="cv_summary"):
        build_ensemble([crop, tmp_path], tmp_path / "z", device="cpu")


def test_members_decode_with_their_own_reader_options(built, synth_datalist, monkeypatch):
    import breastai.inference.predictor as bp
    from breastai.data.datalist import read_datalist

    _, ens = built
    pred = bp.Predictor.from_checkpoint(ens / "fold0" / "best.pt", device="cpu")
    row = read_datalist(synth_datalist)[0]
    seen: list[dict] = []
    import breastai.inference.loading as loading  # the load stage decodes

    real = loading.load_image
    monkeypatch.setattr(loading, "load_image", lambda src, opts: seen.append(opts) or real(src, opts))
    pred.predict(row["image"], masks=[row["mask"]])
    assert len(seen) == 1, "members with the same reader settings decode the file once"
    pred.members[1].reader_options = {"dicom": {"crop_breast": False}}
    seen.clear()
    pred.predict(row["image"], masks=[row["mask"]])
    assert seen == [pred.members[0].reader_options, {"dicom": {"crop_breast": False}}]


def test_members_read_a_dicom_header_for_naming_once(built, synth_datalist, tmp_path, monkeypatch):
    import breastai.data.readers.dicom_header as dcm
    import breastai.inference.predictor as bp
    from conftest import write_grey_dicom

    from breastai.data.datalist import read_datalist

    _, ens = built
    pred = bp.Predictor.from_checkpoint(ens / "fold0" / "best.pt", device="cpu")
    row = read_datalist(synth_datalist)[0]
    path = write_grey_dicom(tmp_path / "x.dcm", np.asarray(Image.open(row["image"]).convert("L")))
    calls = []
    real = dcm.private_identity
    monkeypatch.setattr(dcm, "private_identity", lambda p: calls.append(p) or real(p))
    rec = pred.predict(path, masks=[row["mask"]])[0]
    assert rec["error"] is None and len(calls) == 1 and len(pred.members) > 1


def test_members_of_other_seeds_on_the_same_folds_are_accepted(cv_runs):
    import copy

    from breastai.core.config import split_seed
    from breastai.engine.ensemble import _check_same_folds
    from breastai.engine.cv import load_cv_summary

    crop, whole, _, _ = cv_runs
    a = load_cv_summary(crop)
    b = copy.deepcopy(load_cv_summary(whole))
    b["config"]["data"]["split_seed"] = split_seed(b["config"])
    b["config"]["seed"] = split_seed(b["config"]) + 5  # another training seed, the same folds
    _check_same_folds([crop, whole], [a, b])
    b["config"]["data"]["split_seed"] += 1
    with pytest.raises(ValueError, match="split seed"):
        _check_same_folds([crop, whole], [a, b])


def test_a_datalist_that_gives_other_folds_is_refused(cv_runs, tmp_path, monkeypatch):
    import breastai.engine.ensemble as ens

    crop, whole, _, _ = cv_runs
    real = ens.read_samples
    # As if the members' relative datalist path now led to another file (another working folder).
    monkeypatch.setattr(ens, "read_samples", lambda *a, **k: real(*a, **k)[::-1][: len(real(*a, **k)) - 3])
    with pytest.raises(ValueError, match="other held-out folds than the members'"):
        build_ensemble([crop, whole], tmp_path / "e", device="cpu")
    assert not (tmp_path / "e" / "cv_summary.json").exists()


def test_ensemble_command(cv_runs, tmp_path, capsys):
    from breastai.cli import main

    crop, whole, _, _ = cv_runs
    assert main(["ensemble", str(crop), str(whole), "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    assert "ensemble (mean) of 2 runs: AUC" in capsys.readouterr().out
    assert main(["ensemble", str(crop), "--out", str(tmp_path / "f")]) == 2
    assert "at least two" in capsys.readouterr().err
    # An earlier ensemble is never overwritten piecemeal.
    assert main(["ensemble", str(crop), str(whole), "--out", str(tmp_path / "e")]) == 2
    assert "already holds an ensemble" in capsys.readouterr().err


def test_a_member_that_scores_nan_is_refused_not_fitted(cv_runs, tmp_path):
    """Weights saved as NaN (the file is intact: its digest matches) give non-finite log-odds."""
    import shutil

    from breastai.models.checkpoint_io import save_checkpoint

    crop, whole, _, _ = cv_runs
    bad = tmp_path / "crop"
    shutil.copytree(crop, bad)
    member = load_checkpoint(bad / "fold0" / "best.pt")
    member.weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in member.weights.items()}
    save_checkpoint(bad / "fold0" / "best.pt", member)
    message = (re.escape(f"{bad / 'fold0' / 'best.pt'}: ")
               + r"\d+ of \d+ cases got a non-finite logit .*case_id \w+.*weights or the input images are corrupt")
    with pytest.raises(ValueError, match=message):
        build_ensemble([bad, whole], tmp_path / "e", device="cpu", n_boot=20)
    assert not (tmp_path / "e" / "fold0" / "best.pt").exists()


@pytest.fixture(scope="module")
def single_runs(synth_datalist, tmp_path_factory):
    """Two single-split runs sharing their validation part (seeds 0 and 1, split seed 0), one with its own."""
    from conftest import _tiny_config, synth_rows, write_rows

    out = tmp_path_factory.mktemp("ens1")
    rows = synth_rows(synth_datalist)
    for r in rows:  # a few whole groups held out as the test part
        r["split"] = "test" if int(r["group"][-2:]) % 4 == 0 else ""
    datalist = write_rows(out / "split.csv", rows)
    common = ("train.epochs=1", "data.val_fraction=0.25", "log.tensorboard=false")
    a = train_main(_tiny_config(datalist, out, "run_name=a", "seed=0", "data.split_seed=0", *common))
    b = train_main(_tiny_config(datalist, out, "run_name=b", "seed=1", "data.split_seed=0", *common))
    c = train_main(_tiny_config(datalist, out, "run_name=c", "seed=1", *common))  # validation carved by seed 1
    return Path(a["run_dir"]), Path(b["run_dir"]), Path(c["run_dir"]), out, sum(r["split"] == "test" for r in rows)


def test_a_seed_ensemble_of_single_runs(single_runs, cv_runs, capsys):
    from breastai.cli import main

    a, b, c, out, n_test = single_runs
    summary = build_ensemble([a, b], out / "seeds", device="cpu", n_boot=20)
    ens = load_checkpoint(out / "seeds" / "best.pt")
    first = load_checkpoint(a / "best.pt")
    assert ens.is_ensemble and len(ens.members) == 2 and ens.combine == "mean"
    assert summary["weights"][0] == summary["weights"][1] and ens.member_weights == summary["weights"]
    # Fitted on the validation part both members selected on; the test rows were only scored.
    assert sorted(ens.seen_images["val"]) == sorted(first.seen_images["val"])
    assert summary["test"]["n"] == n_test and len(summary["member_test_auc"]) == 2
    assert json.loads((out / "seeds" / "summary.json").read_text())["threshold"] == pytest.approx(ens.threshold)
    with pytest.raises(ValueError, match="validation part differs .* data.split_seed"):
        build_ensemble([a, c], out / "bad", device="cpu")
    with pytest.raises(ValueError, match="runs of one kind"):
        build_ensemble([a, cv_runs[0]], out / "bad", device="cpu")
    assert not (out / "bad").exists()
    assert main(["ensemble", str(a), str(b), "--out", str(out / "cli"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble (mean) of 2 runs: weights" in printed and "test AUC" in printed and "best.pt" in printed


def test_a_seed_ensemble_read_from_another_datalist_is_refused(single_runs, monkeypatch):
    """The members' validation digests, not only their configs, decide: a datalist that now gives
    other rows at the same path (another working folder) is refused before anything is fitted."""
    import breastai.engine.ensemble as ens

    a, b, _, out, _ = single_runs
    real = ens.read_samples
    monkeypatch.setattr(ens, "read_samples", lambda *args, **kw: real(*args, **kw)[3:])
    with pytest.raises(ValueError, match="validation part differs"):
        build_ensemble([a, b], out / "moved", device="cpu")
    assert not (out / "moved").exists()
