"""Breast and exam levels through predict and evaluate, grouping from datalists and DICOM headers, mini-MIAS sides."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from conftest import real_data, synth_rows, write_grey_dicom, write_rows
from sklearn.metrics import roc_auc_score

from breastai.data.datalist import DatalistError, read_datalist
from breastai.data.grouping import age_band, dicom_header_fields, grouping_of
from breastai.data.readers.dicom_header import uid_hash


def _csv(path):
    return list(csv.DictReader(open(path)))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _exam_rows(synth_datalist, tmp_path, n_exams=4):
    """Synthetic images arranged as exams of four views (L/R x CC/MLO), the benign images first so that exams
    of both classes exist; the last exam lacks its R CC."""
    rows = sorted(synth_rows(synth_datalist), key=lambda r: r["label"])[: 4 * n_exams]
    views = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    for k, r in enumerate(rows):
        r.update(exam=f"ex{k // 4}", laterality=views[k % 4][0], view=views[k % 4][1], scanner="AB"[k % 2])
    return rows[:-2] + rows[-1:]  # drop R CC of the last exam


def test_datalist_laterality_is_checked_and_written_among_the_first_extras(synth_datalist, tmp_path):
    rows = _exam_rows(synth_datalist, tmp_path)
    rows[1]["laterality"] = "left"
    path = write_rows(tmp_path / "bad.csv", rows)
    with pytest.raises(DatalistError, match=r"bad.csv, row 3: 'laterality' must be L, R, B or empty, got 'left'"):
        read_datalist(path)
    rows[1]["laterality"] = "l"
    recs = read_datalist(write_rows(tmp_path / "ok.csv", rows))
    assert recs[1]["laterality"] == "L"
    assert grouping_of(recs[1]) == {"exam": "ex0", "laterality": "L", "view": "MLO"}
    # a group that is only the default (the case id) is no exam; one the datalist gave is
    assert grouping_of({"case_id": "a", "group": "a", "image": "a.png"})["exam"] is None
    assert grouping_of({"case_id": "a", "group": "patient7", "image": "a.png"})["exam"] == "patient7"


def test_predict_writes_breast_and_exam_tables(ckpt, synth_datalist, tmp_path):
    from breastai.inference.writers import run_predict

    rows = _exam_rows(synth_datalist, tmp_path)
    data = write_rows(tmp_path / "exams.csv", rows)
    out = tmp_path / "pred"
    records, run = run_predict(ckpt, [data], out, saliency="none", device="cpu")
    assert all(r["error"] is None for r in records) and "_calibrated_logit" not in records[0]
    prob = {r["id"]: r["probability"] for r in records}
    exams = _csv(out / "exams.csv")
    breasts = _csv(out / "breasts.csv")
    assert [e["id"] for e in exams] == ["ex0", "ex1", "ex2", "ex3"]
    assert [e["n_images"] for e in exams] == ["4", "4", "4", "3"]
    assert exams[3]["views_present"] == "CC;MLO" and len(breasts) == 8
    for e in exams:  # default rule: max of the calibrated log-odds, so the max probability, at the image threshold
        members = e["members"].split(";")
        assert float(e["probability"]) == pytest.approx(max(prob[m] for m in members), abs=1e-6)
        assert e["driver"] == max(members, key=prob.get)
        assert e["label"] == ("malignant" if float(e["probability"]) >= run["threshold"] else "benign")
    last_r = next(b for b in breasts if b["id"] == "ex3_R")
    assert (last_r["n_images"], last_r["views_present"], last_r["laterality"]) == ("1", "MLO", "R")
    j = json.loads((out / "exams.json").read_text())
    assert j["run"] == run["run_id"] and j["rule"]["rule"] == "max" and len(j["records"]) == 4
    assert run["levels"]["breast"]["n"] == 8
    assert _csv(out / "predictions.csv")[0]["exam"] == "ex0"
    # a rerun on inputs without grouping removes the earlier level tables
    run_predict(ckpt, [rows[0]["image"]], out, saliency="none", device="cpu")
    assert not (out / "exams.csv").exists() and not (out / "breasts.json").exists()


def test_predict_groups_dicom_by_hashed_study_uid_and_header_laterality(ckpt, tmp_path):
    import pydicom

    from breastai.inference.writers import run_predict

    rng = np.random.default_rng(0)
    study = "1.2.826.0.1.3680043.8.498.777"
    (tmp_path / "in").mkdir()
    for k, (lat, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "MLO")]):
        path = write_grey_dicom(tmp_path / "in" / f"im{k}.dcm", rng.integers(0, 255, (64, 64)),
                                sop_uid=f"1.2.826.0.1.3680043.8.498.{100 + k}")
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.ImageLaterality, ds.ViewPosition, ds.PatientAge = study, lat, view, "052Y"
        ds.save_as(path)
    out = tmp_path / "pred"
    run_predict(ckpt, [tmp_path / "in"], out, saliency="none", device="cpu")
    (exam,) = _csv(out / "exams.csv")
    assert exam["id"] == uid_hash(study) and exam["n_images"] == "3" and exam["views_present"] == "CC;MLO"
    assert {b["id"] for b in _csv(out / "breasts.csv")} == {f"{uid_hash(study)}_L", f"{uid_hash(study)}_R"}
    for name in ("exams.csv", "breasts.json", "predictions.csv"):
        text = (out / name).read_text()
        assert study not in text and "PID-7734521" not in text and "052Y" not in text
    fields = dicom_header_fields(tmp_path / "in" / "im0.dcm", ["ViewPosition", "Laterality", "age_band"])
    assert fields == {"ViewPosition": "CC", "Laterality": "L", "age_band": "50-59"}


def test_age_bands():
    assert [age_band(a) for a in ("039Y", "040Y", "555M", "069Y", "070Y", "732.0m", "", "abc")] == [
        "<40", "40-49", "40-49", "60-69", ">=70", "60-69", "", ""]


def test_evaluate_at_exam_level_with_subgroups_and_a_fitted_rule(ckpt, synth_datalist, tmp_path):
    from breastai.engine.evaluate import evaluate_checkpoint

    rows = _exam_rows(synth_datalist, tmp_path, n_exams=8)
    data = write_rows(tmp_path / "exams.csv", rows)
    img = evaluate_checkpoint(ckpt, data, tmp_path / "img", device="cpu", n_boot=50, by=["scanner"])
    per_image = {r["case_id"]: float(r["probability"]) for r in _csv(tmp_path / "img" / "predictions.csv")}
    f = img["subgroups"]["scanner"]["A"]
    a_rows = [r for r in rows if r["scanner"] == "A"]
    y = np.array([r["label"] == "malignant" for r in a_rows], int)
    p = np.array([per_image[r["case_id"]] for r in a_rows])
    assert f["n"] == len(a_rows) and f["prevalence"] == pytest.approx(y.mean())
    assert f["auc"] is not None and f["auc"] == pytest.approx(roc_auc_score(y, [_logit(v) for v in p]), abs=1e-6)
    assert f["sensitivity"] == pytest.approx(np.mean(p[y == 1] >= img["threshold"]))
    assert (tmp_path / "img" / "subgroups.png").read_bytes()[:4] == b"\x89PNG"

    rep = evaluate_checkpoint(ckpt, data, tmp_path / "exam", device="cpu", n_boot=50, level="exam", by=["scanner"])
    table = _csv(tmp_path / "exam" / "predictions.csv")
    assert rep["level"] == "exam" and rep["n"] == 8 and rep["n_images"] == 31 and len(table) == 8
    assert rep["level_rule"]["rule"] == "max" and rep["threshold"] == img["threshold"]
    assert [t["case_id"] for t in table] == [f"ex{k}" for k in range(8)]
    assert table[-1]["n_images"] == "3" and rep["subgroups"]["scanner"] == {"(mixed)": rep["subgroups"]["scanner"]["(mixed)"]}
    truth = {r["case_id"]: r["label"] for r in rows}
    for t in table:
        members = t["members"].split(";")
        assert float(t["probability"]) == pytest.approx(max(per_image[m] for m in members), abs=1e-9)
        assert t["label"] == ("malignant" if "malignant" in {truth[m] for m in members} else "benign")
    y = np.array([t["label"] == "malignant" for t in table], int)
    assert 0 < y.sum() < y.size and rep["auc"] == pytest.approx(roc_auc_score(y, [_logit(float(t["probability"])) for t in table]), abs=1e-6)

    # the rule fitted on other data with exam structure is what the report uses
    val_rows = _exam_rows(synth_datalist, tmp_path, n_exams=8)
    for r in val_rows:
        r["exam"] = "v" + r["exam"]
    val = write_rows(tmp_path / "val.csv", val_rows)
    fit = evaluate_checkpoint(ckpt, data, tmp_path / "fit", device="cpu", n_boot=50, level="breast", fit_on=val)
    assert fit["level_rule"]["source"].startswith(f"fitted on {val}") and fit["threshold"] == fit["level_rule"]["threshold"]
    with pytest.raises(ValueError, match="lack an exam and a laterality"):
        evaluate_checkpoint(ckpt, synth_datalist, tmp_path / "x", device="cpu", n_boot=50, level="breast")
    with pytest.raises(ValueError, match="no column 'scanner'"):
        evaluate_checkpoint(ckpt, synth_datalist, tmp_path / "x", device="cpu", n_boot=50, by=["scanner"])


def test_mias_rows_carry_exam_and_side(tmp_path):
    from breastai.data.prepare.mias import prepare_mias

    root = real_data("mias")
    out = tmp_path / "mias.csv"
    prepare_mias(root, out, mask_dir=tmp_path / "m")
    rows = _csv(out)
    assert len(rows) == 119
    for r in rows:
        n = int(r["case_id"][3:6])
        assert r["laterality"] == ("L" if n % 2 == 0 else "R")  # Info.txt note 1: even = left
        assert r["exam"] == r["group"] == f"mias_p{(n + 1) // 2:03d}"
    both = {r["exam"] for r in rows if r["laterality"] == "L"} & {r["exam"] for r in rows if r["laterality"] == "R"}
    assert both  # some patients have findings in both breasts
