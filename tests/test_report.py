"""``breastai report``: the HTML page of a predict, evaluate and cross-validation folder, and the page in Chromium."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cdp import Chromium, chromium_or_skip

EVIL_ID = "<script>alert(1)</script>"
EVIL_FILE = "<img src=x onerror=alert(2)>.png"  # a missing input: its error names it


@pytest.fixture(scope="module")
def predict_dir(tmp_path_factory, predictor, synth_datalist) -> Path:
    from breastai.inference.writers import run_predict

    base = tmp_path_factory.mktemp("report_predict")
    rows = list(csv.DictReader(open(synth_datalist)))[:6]
    for r in rows:
        for k in ("image", "mask"):
            r[k] = str(synth_datalist.parent / r[k])
    rows[0]["case_id"] = EVIL_ID
    with open(base / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run_predict(predictor, [base / "cases.csv", base / EVIL_FILE], base / "out", saliency="gradcam")
    return base / "out"


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, ckpt, synth_datalist) -> Path:
    from breastai.engine.evaluate import evaluate_checkpoint

    out = tmp_path_factory.mktemp("report_eval") / "eval"
    evaluate_checkpoint(ckpt, synth_datalist, out, device="cpu", n_boot=50)
    return out


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory) -> Path:
    """A cross-validation run folder as ``engine.cv.cv_summary`` writes it, from made-up fold results."""
    from breastai.engine.cv import cv_summary
    from breastai.reporting.metrics import evaluation_report

    rng = np.random.default_rng(0)
    per_fold, oof = [], []
    for fold in range(3):
        y = np.r_[np.zeros(10, int), np.ones(10, int)]
        z = 1.5 * (y - 0.5) + rng.normal(0, 1, y.size)
        p = 1 / (1 + np.exp(-z))
        per_fold.append({"fold": fold, "best_epoch": 1, **evaluation_report(y, p, 0.4 + 0.1 * fold, n_boot=20)})
        oof += [{"case_id": f"f{fold}c{i}", "fold": fold, "label": int(y[i]), "logit": float(z[i]),
                 "calibrated_logit": float(z[i]), "probability": float(p[i])} for i in range(y.size)]
    run = tmp_path_factory.mktemp("report_cv")
    cv_summary(per_fold, oof, {"data": {"classes": ["benign", "malignant"]}}, run)
    return run


def _report(folder: Path, out: Path, *extra: str) -> str:
    from breastai.cli import main

    assert main(["report", str(folder), "--out", str(out), *extra]) == 0
    return out.read_text()


def _case_rows(text: str) -> int:
    assert text.count("<tbody>") == 1
    return text.split("<tbody>")[1].split("</tbody>")[0].count("<tr")


def _assert_offline(text: str) -> None:
    assert not re.search(r"https?://", text, re.I), "the page names a network address"
    assert not re.search(r"<(link|iframe|object|embed)\b", text, re.I)
    assert len(re.findall(r"<script", text)) == 1  # the page's own script, nothing a case id brought in


def test_predict_report_html(predict_dir, tmp_path):
    text = _report(predict_dir, tmp_path / "r.html")
    _assert_offline(text)
    assert _case_rows(text) == 7  # 6 cases + the failed input
    assert EVIL_ID not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text  # the error, escaped
    assert 'class="failed"' in text
    assert text.count('<img class="thumb" src="data:image/png;base64,') == 6
    assert text.count('class="zoom" href="data:image/jpeg;base64,') == 6
    assert "Content-Security-Policy" in text


def test_predict_report_shows_the_whole_image_probability_of_a_no_lesion_image(predict_dir, tmp_path):
    """A "no lesion found" record with the whole-image members' ``image_probability`` gets that column;
    a run without any has none."""
    assert "whole-image probability" not in _report(predict_dir, tmp_path / "plain.html")
    folder = tmp_path / "nolesion"
    shutil.copytree(predict_dir, folder)
    data = json.loads((folder / "predictions.json").read_text())
    rec = data["records"][1]
    rec.update(label="no lesion found", probability=None, logit=None, image_probability=0.8125, cancer_probability=0.40625)
    (folder / "predictions.json").write_text(json.dumps(data))
    text = _report(folder, tmp_path / "r.html")
    assert "whole-image probability (no lesion found)" in text and "0.812" in text
    assert "probability of cancer (presence x probability)" in text and "0.406" in text


def test_predict_report_linked_images(predict_dir, tmp_path):
    out = tmp_path / "sub" / "r.html"
    text = _report(predict_dir, out, "--link-images")
    links = re.findall(r'class="zoom" href="([^"]+)"', text)
    assert len(links) == 6 and all((out.parent / h).is_file() for h in links)
    assert len(text) < len(_report(predict_dir, tmp_path / "embedded.html"))


def test_evaluate_report_html(eval_dir, tmp_path):
    import json

    text = _report(eval_dir, tmp_path / "e.html")
    _assert_offline(text)
    n = json.loads((eval_dir / "metrics.json").read_text())["n"]
    assert _case_rows(text) == n
    assert text.count('src="data:image/png;base64,') == 3  # ROC, reliability, confusion
    assert "ROC with 95% bootstrap band" in text and re.search(r">(TP|FP|TN|FN)<", text)


def test_evaluate_report_lists_lesion_free_images_outside_the_figures(eval_dir, tmp_path):
    """evaluate --auto-outline's rows labelled normal: listed (a positive call is a false positive),
    counted in the summary, and left out of the ROC and the metrics; without the outline record such a
    row is still refused."""
    import csv
    import json

    folder = tmp_path / "free"
    shutil.copytree(eval_dir, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = list(csv.DictReader(open(folder / "predictions.csv")))
    threshold = float(metrics["threshold"])
    extra = [{**rows[0], "case_id": "n1", "label": "normal", "probability": str(threshold + 0.01)},
             {**rows[0], "case_id": "n2", "label": "normal", "probability": str(threshold / 2)}]
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + extra)
    with pytest.raises(Exception):  # no lesion-free record in metrics.json: an unknown label
        from breastai.reporting.report import build_report
        build_report(folder, tmp_path / "x.html")
    metrics["outline"] = {"lesion_free": {"n": 2, "given_a_lesion": 1, "called_positive": 1,
                                          "auc_all_images": 0.9, "auc_all_images_cancer_probability": 0.95}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    text = _report(folder, tmp_path / "r.html")
    assert _case_rows(text) == metrics["n"] + 2
    assert "2: 1 given a lesion, 1 called positive" in text and "0.900 / 0.950" in text
    row = {cid: re.search(rf"<tr[^>]*>(?:(?!</tr>).)*>{cid}<(?:(?!</tr>).)*</tr>", text, re.S).group(0) for cid in ("n1", "n2")}
    assert ">normal<" in row["n1"] and ">FP<" in row["n1"] and ">TN<" in row["n2"]


def test_cv_report_html(cv_dir, tmp_path):
    text = _report(cv_dir, tmp_path / "cv.html")
    _assert_offline(text)
    assert "cross-validation" in text and "pooled out-of-fold AUC" in text
    assert _case_rows(text) == 60
    assert "each fold&#x27;s threshold" in text


def test_report_refuses_other_folders(tmp_path, capsys):
    from breastai.cli import main

    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "neither a predict folder" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_report_in_chromium(predict_dir, eval_dir, tmp_path):
    exe = chromium_or_skip()
    page = tmp_path / "report.html"
    _report(predict_dir, page)
    evaluation = tmp_path / "evaluation.html"
    _report(eval_dir, evaluation)
    profile = tmp_path / "profile"
    profile.mkdir()
    with Chromium(exe, profile) as browser:
        browser.open(page.as_uri())
        probs = "Array.from(document.querySelectorAll('#cases tbody tr')).map(r => r.cells[2].getAttribute('data-v'))"
        before = browser.eval(probs)
        assert len(before) == 7 and browser.eval("document.images[1].naturalWidth") > 0
        browser.click("#cases th:nth-child(3)")  # probability
        ascending = browser.eval(probs)
        numbers = [float(v) for v in ascending if v]
        assert numbers == sorted(numbers) and ascending[-1] == ""  # the failed case last
        browser.click("#cases th:nth-child(3)")
        descending = [float(v) for v in browser.eval(probs) if v]
        assert descending == sorted(numbers, reverse=True) and descending != numbers
        shot = browser.screenshot(tmp_path / "report.png")

        browser.click("#cases tbody tr a.zoom")
        assert browser.eval("document.getElementById('lightbox').hidden") is False
        browser.eval("new Promise(r => { const i = document.getElementById('lightbox-img'); "
                     "i.complete ? r() : i.onload = r; })")
        full = browser.eval("document.getElementById('lightbox-img').naturalWidth")
        thumb = browser.eval("document.querySelector('#cases img.thumb').naturalWidth")
        assert full > 0 and thumb > 0
        browser.click("#lightbox")
        assert browser.eval("document.getElementById('lightbox').hidden") is True

        browser.open(evaluation.as_uri())
        assert browser.eval("Array.from(document.querySelectorAll('.figs img')).map(i => i.naturalWidth > 0)") == [True] * 3
        browser.click("#cases th:nth-child(1)")
        ids = browser.eval("Array.from(document.querySelectorAll('#cases tbody tr')).map(r => r.cells[0].textContent)")
        assert ids == sorted(ids)
        assert browser.errors == [], browser.errors  # a script run by a case id would have opened a dialog
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("BREASTAI_REPORT_SCREENSHOT"):  # how docs/report.png is made
        shutil.copy(shot, os.environ["BREASTAI_REPORT_SCREENSHOT"])
