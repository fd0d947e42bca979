"""``breastai calibrate``: local recalibration of calibration and threshold, never the weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from breastai.engine.recalibrate import (MIN_PER_CLASS, TooFewCasesError, fit_local, local_log_odds,
                                         recalibrate_checkpoint)
from breastai.models.calibration import apply_temperature, fit_platt
from breastai.models.checkpoint import weights_digest
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.reporting.metrics import ece
from conftest import synth_rows, write_rows


def _site_shift(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds z of a model at a new site whose true log-odds are 0.6 z - 2.5 (benign scored too high)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(1.0, 3.0, n)
    y = (rng.random(n) < apply_temperature(0.6 * z - 2.5, 1.0)).astype(int)
    return z, y


def test_platt_recovers_slope_and_intercept():
    z, y = _site_shift(20000, 0)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.6, abs=0.03) and b == pytest.approx(-2.5, abs=0.08)


def test_platt_moves_the_shift_that_a_temperature_cannot():
    z, y = _site_shift(3000, 1)
    fit, rest = slice(0, 50), slice(50, None)
    before = ece(y[rest], apply_temperature(z[rest], 1.0))
    temp = fit_local(z[fit], y[fit], "temperature")
    platt = fit_local(z[fit], y[fit], "platt")
    after_t, after_p = ece(y[rest], temp.probability(z[rest])), ece(y[rest], platt.probability(z[rest]))
    assert temp.intercept == 0.0
    assert before > 0.2 and after_p < 0.06 and after_p < after_t < before


def test_platt_on_a_separable_sample_stays_finite():
    a, b = fit_platt(np.array([1.0, 2, 3, -1, -2, -3]), np.array([1, 1, 1, 0, 0, 0]))
    assert np.isfinite(a) and np.isfinite(b) and 1.0 < a <= 20.0 + 1e-9


def test_keep_carries_the_old_operating_point():
    z, y = _site_shift(200, 2)
    fit = fit_local(z, y, "platt", threshold_method="keep", threshold_before=0.7)
    cut = np.log(0.7 / 0.3)  # the old threshold's log-odds
    assert np.array_equal(fit.probability(z) >= fit.threshold, z >= cut - 1e-9)


def test_too_few_cases_of_a_class_are_refused():
    z = np.arange(12.0)
    y = np.r_[np.zeros(8), np.ones(MIN_PER_CLASS - 1)].astype(int)[:12]
    with pytest.raises(TooFewCasesError, match=rf"8 benign and 4 malignant.*at least {MIN_PER_CLASS} of each"):
        fit_local(z[: y.size], y, "platt", classes=("benign", "malignant"))
    with pytest.raises(ValueError, match="unknown recalibration method"):
        fit_local(np.arange(10.0), np.r_[np.zeros(5), np.ones(5)], "isotonic")


# --- end to end, on the tiny trained checkpoint -------------------------------------------------------------


@pytest.fixture(scope="module")
def shifted(ckpt, tmp_path_factory):
    """A checkpoint whose log-odds z we control, at a 'site' whose truth is 0.6 z - 2.5 (benign too high).

    The tiny trained checkpoint ranks nothing after 2 epochs, so its head is replaced by a fixed random
    one, scaled so that z has mean 1 and SD 3 over the synthetic images; each image's label is then
    drawn from the site's truth. Half the images are the local sample, the other half the rest of the site.
    """
    from breastai.data.frames import read_samples
    from breastai.data.synthetic import make_demo_dataset

    out = tmp_path_factory.mktemp("recal")
    datalist = make_demo_dataset(out / "site", n_per_class=60, size=64, seed=3)
    c = load_checkpoint(ckpt)
    weights = dict(c.weights)
    weights["head.weight"] = torch.randn(weights["head.weight"].shape, generator=torch.Generator().manual_seed(0))
    weights["head.bias"] = torch.zeros(1)
    c = dataclasses.replace(c, weights=weights, temperature=1.0, logit_offset=0.0)
    z0 = local_log_odds(c, read_samples(datalist, c.config["data"], c.classes), torch.device("cpu"))["logit"]
    k = 3.0 / z0.std()
    weights["head.weight"] = weights["head.weight"] * k
    weights["head.bias"] = torch.tensor([1.0 - k * z0.mean()], dtype=weights["head.bias"].dtype)
    src = save_checkpoint(out / "src.pt", dataclasses.replace(c, weights=weights))
    z = 1.0 + k * (z0 - z0.mean())
    truth = apply_temperature(0.6 * z - 2.5, 1.0)
    y = np.random.default_rng(0).random(z.size) < truth
    rows = synth_rows(datalist)
    for r, yy in zip(rows, y):
        r["label"] = "malignant" if yy else "benign"
    local = write_rows(out / "local.csv", rows[0::2])
    rest = write_rows(out / "rest.csv", rows[1::2])
    return src, local, rest, out


@pytest.fixture(scope="module")
def recalibrated(shifted):
    """``shifted``'s checkpoint recalibrated (platt) on its local sample: (record, new checkpoint path)."""
    src, local, _, out = shifted
    return recalibrate_checkpoint(src, local, out / "platt.pt", method="platt", device="cpu"), out / "platt.pt"


def _counts(datalist: Path) -> dict[str, int]:
    import csv

    labels = [r["label"] for r in csv.DictReader(open(datalist))]
    return {c: labels.count(c) for c in ("benign", "malignant")}


def _ece_on(checkpoint: Path, data: Path) -> float:
    from breastai.data.frames import read_samples

    c = load_checkpoint(checkpoint)
    records = read_samples(data, c.config["data"], c.classes)
    pred = local_log_odds(c, records, torch.device("cpu"))
    return ece(pred["label"], apply_temperature(pred["logit"], 1.0))


def test_calibrate_lowers_ece_on_held_out_rows_and_keeps_the_weights(shifted, recalibrated):
    from breastai.data.provenance import part_digests
    from breastai.data.datalist import read_datalist
    from breastai.core.files import file_sha256

    src, local, rest, out = shifted
    rec = recalibrated[0]
    old, new = load_checkpoint(src), load_checkpoint(out / "platt.pt")
    assert weights_digest(new) == weights_digest(old) == rec.weights_digest
    before = _ece_on(src, rest)
    assert before > 0.3 and _ece_on(out / "platt.pt", rest) < before / 2
    # What was refitted, on what, from which file.
    counts = _counts(local)
    assert new.recalibration[-1] == rec and rec.method == "platt" and rec.n == 60
    assert rec.n_per_class == counts and min(counts.values()) >= MIN_PER_CLASS
    assert rec.image_digests == part_digests(read_datalist(local)) and len(rec.image_digests) == 60
    assert rec.source_checkpoint == file_sha256(src)
    assert rec.before == {"temperature": old.temperature, "logit_offset": old.logit_offset}
    assert rec.after == {"temperature": new.temperature, "logit_offset": new.logit_offset}
    assert rec.threshold_before == old.threshold and rec.threshold_after == new.threshold
    assert rec.threshold_method == "youden"  # the checkpoint's eval.threshold_method
    assert rec.metrics["ece_after"] < rec.metrics["ece_before"]
    # A second recalibration keeps the first one's record.
    again = recalibrate_checkpoint(out / "platt.pt", local, out / "twice.pt", method="temperature", device="cpu")
    assert [r.method for r in load_checkpoint(out / "twice.pt").recalibration] == ["platt", "temperature"]
    assert again.before == rec.after


def test_predict_and_evaluate_use_the_new_calibration(shifted, recalibrated, tmp_path):
    from breastai.data.datalist import read_datalist
    from breastai.engine.evaluate import evaluate_checkpoint
    from breastai.inference.predictor import Predictor
    from breastai.inference.writers import run_predict

    src, local, rest, out = shifted
    fit, new = recalibrated
    row = read_datalist(rest)[0]
    p_old = Predictor.from_checkpoint(src, device="cpu").predict(row["image"], masks=[row["mask"]])[0]
    p_new = Predictor.from_checkpoint(new, device="cpu").predict(row["image"], masks=[row["mask"]])[0]
    z_old = np.log(p_old["probability"] / (1 - p_old["probability"]))
    expected = apply_temperature(fit.slope * z_old + fit.intercept, 1.0)
    assert p_new["probability"] == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    rep = evaluate_checkpoint(new, rest, tmp_path / "ev", device="cpu", n_boot=20)
    assert rep["recalibration"]["method"] == "platt" and rep["recalibration"]["n"] == 60
    assert rep["threshold"] == pytest.approx(fit.threshold_after)
    assert "n_seen_in_recalibration" not in rep  # the rest of the site is not the fitted sample
    _, run = run_predict(Predictor.from_checkpoint(new, device="cpu"), [row["image"]],
                         tmp_path / "pr", masks=[row["mask"]])
    written = json.loads((tmp_path / "pr" / "predictions.json").read_text())["run"]
    assert written["recalibration"]["n_per_class"] == _counts(local)
    assert run["recalibration"]["source_checkpoint"] == fit.source_checkpoint


def test_old_checkpoint_without_the_field_still_loads(shifted):
    src = shifted[0]
    state = torch.load(src, weights_only=True)
    assert "recalibration" not in state
    c = load_checkpoint(src)
    assert c.recalibration is None
    assert "recalibration" not in c.to_state()  # and is written back without it, digest unchanged
    assert c.to_state()["digest"] == state["digest"]


def test_ensemble_is_recalibrated_on_its_combined_log_odds(shifted, tmp_path):
    from breastai.engine.ensemble import ensemble_state

    src, local, rest, _ = shifted
    member = load_checkpoint(src)
    ens = ensemble_state([member, member], np.array([0.5, 0.5]), 0.0, "mean", 0.5, {}, ["a", "b"])
    save_checkpoint(tmp_path / "ens.pt", ens)
    rec = recalibrate_checkpoint(tmp_path / "ens.pt", local, tmp_path / "ens2.pt", method="platt", device="cpu")
    new = load_checkpoint(tmp_path / "ens2.pt")
    assert new.member_weights == pytest.approx([0.5 * rec.slope, 0.5 * rec.slope])
    assert new.bias == pytest.approx(rec.intercept)
    assert [m.temperature for m in new.members] == [member.temperature] * 2  # members untouched
    assert weights_digest(new) == weights_digest(ens)
    assert rec.metrics["ece_after"] < rec.metrics["ece_before"] / 2


def test_cli_round_trip_and_refusals(shifted, tmp_path, capsys):
    from breastai.cli import main

    src, local, rest, out = shifted
    assert main(["calibrate", "--checkpoint", str(src), "--data", str(local), "--out", str(tmp_path / "c.pt"),
                 "--method", "platt", "--threshold-method", "sensitivity@0.9", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    n = _counts(local)
    assert f"platt recalibration on 60 local cases ({n['benign']} benign, {n['malignant']} malignant)" in said
    assert "weights unchanged" in said
    assert load_checkpoint(tmp_path / "c.pt").recalibration[0].threshold_method == "sensitivity@0.9"
    # Too few malignant cases: refused, one line naming the datalist and the rule, nothing written.
    rows = synth_rows(local.parent / "local.csv")
    few = write_rows(tmp_path / "few.csv", [r for r in rows if r["label"] == "benign"] +
                     [r for r in rows if r["label"] == "malignant"][:3])
    assert main(["calibrate", "--checkpoint", str(src), "--data", str(few), "--out", str(tmp_path / "f.pt")]) == 2
    err = capsys.readouterr().err
    assert f"few.csv: {n['benign']} benign and 3 malignant case(s)" in err and f"at least {MIN_PER_CLASS} of each class" in err
    assert not (tmp_path / "f.pt").exists()
    # The source is never overwritten, and an unknown threshold method is refused before scoring.
    assert main(["calibrate", "--checkpoint", str(src), "--data", str(local), "--out", str(src)]) == 2
    assert "is the source checkpoint" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(src), "--data", str(local), "--out", str(tmp_path / "g.pt"),
                 "--threshold-method", "best"]) == 2
    assert "unknown threshold method" in capsys.readouterr().err
