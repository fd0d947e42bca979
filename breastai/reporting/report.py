"""``breastai report``: one self-contained HTML page of a predict, evaluate or cross-validation folder.

- a **predict** folder (``predictions.json``): a sortable table of the cases (probability, label,
  uncertainty, errors) with a thumbnail of each saliency overlay that opens full size;
- an **evaluate** folder (``metrics.json`` + ``predictions.csv``) or a **cross-validation** run
  (``cv_summary.json`` + ``oof_predictions.csv``): the ROC curve with its bootstrap band, the
  reliability diagram, the confusion matrix at the operating threshold, the headline metrics and
  the per-case table.

The figures are the ones of :mod:`breastai.reporting.plots`, the numbers those of
:mod:`breastai.reporting.metrics`; the page pieces are :mod:`breastai.reporting.html`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from breastai.core.files import atomic_write_text
from breastai.reporting import plots
from breastai.reporting.html import Column, esc, figure_uri, image_uri, key_values, page, sortable_table, zoom_link
from breastai.reporting.metrics import binary_metrics, bootstrap_auc_ci

__all__ = ["ReportError", "folder_kind", "build_report", "write_report", "THUMB_SIDE"]

THUMB_SIDE = 112  # pixels, the longer side of a table thumbnail


class ReportError(ValueError):
    """The folder is not one a report can be made of, or its files are not as written."""


def folder_kind(folder: str | Path) -> str:
    """``predict``, ``evaluate`` or ``cv``: which command wrote ``folder``.

    Raises:
        ReportError: none of them did.
    """
    f = Path(folder)
    if not f.is_dir():
        raise ReportError(f"{folder}: not a folder (give a predict, evaluate or cross-validation output folder)")
    if (f / "cv_summary.json").is_file() and (f / "oof_predictions.csv").is_file():
        return "cv"
    if (f / "metrics.json").is_file() and (f / "predictions.csv").is_file():
        return "evaluate"
    if (f / "predictions.json").is_file():
        return "predict"
    raise ReportError(f"{folder}: neither a predict folder (predictions.json), an evaluate folder (metrics.json "
                      "and predictions.csv) nor a cross-validation run (cv_summary.json and oof_predictions.csv)")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _uri_from(target: Path, out: Path) -> str:
    """A link to ``target`` relative to the report ``out`` (portable when they move together)."""
    return Path(os.path.relpath(target.resolve(), out.resolve().parent)).as_posix()


# --- predict --------------------------------------------------------------------------------


def _predict_images(folder: Path, rec: dict[str, Any], out: Path, link_images: bool) -> str:
    rel = rec.get("saliency_png")
    if not rel:
        return ""
    path = folder / rel
    try:
        thumb = image_uri(path, THUMB_SIDE)
        # Full size: re-encoded as JPEG (a tenth of the overlay PNG's bytes) unless linked to the file itself.
        full = _uri_from(path, out) if link_images else image_uri(path, fmt="JPEG")
    except OSError:
        return "(image missing)"
    caption = f"{rec.get('id')}  p={_float(rec.get('probability')):.3f}  {rec.get('label') or ''}"
    return zoom_link(full, f'<img class="thumb" src="{thumb}" alt="{esc(rec.get("id"))}">', caption)


def _predict_page(folder: Path, out: Path, link_images: bool) -> str:
    data = _json(folder / "predictions.json")
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ReportError(f"{folder / 'predictions.json'}: not written by breastai predict (no 'records' list)")
    run, records = data.get("run") or {}, data["records"]
    classes = run.get("classes") or []
    positive = classes[1] if len(classes) == 2 else None
    rows = []
    for r in records:
        rows.append({**r, "image": _predict_images(folder, r, out, link_images),
                     "has_mask": {True: "yes", False: "no"}.get(r.get("has_mask"), r.get("has_mask")),
                     "_class": "failed" if r.get("error") else ("positive" if positive and r.get("label") == positive else "")})
    n_failed = sum(bool(r.get("error")) for r in records)
    counts = [(f"labelled {c}", sum(r.get("label") == c for r in records)) for c in classes]
    summary = key_values([
        ("checkpoint", run.get("checkpoint")), ("run", run.get("run_id")), ("created", run.get("created")),
        ("cases", len(records)), *counts, ("failed", n_failed), ("threshold", run.get("threshold")),
        ("saliency", run.get("saliency")), ("test-time augmentation", run.get("tta")),
    ])
    columns = [Column("image", "saliency", "html"), Column("id", "case"), Column("probability", "probability", "num"),
               Column("label", "label"), Column("uncertainty", "uncertainty", "num"), Column("logit", "logit", "num", 2),
               Column("has_mask", "outline"), Column("error", "error"), Column("source", "source")]
    if any(r.get("image_probability") is not None for r in records):  # whole-image members ranked a no-lesion image
        columns.insert(4, Column("image_probability", "whole-image probability (no lesion found)", "num"))
    if any(r.get("cancer_probability") is not None for r in records):  # segmenter records: presence x probability
        columns.insert(3, Column("cancer_probability", "probability of cancer (presence x probability)", "num"))
    body = (f"<h2>Run</h2>{summary}<h2>Cases</h2><p class=\"sub\">Click a header to sort, a thumbnail to see it "
            f"full size.</p>{sortable_table(columns, rows)}")
    return page("breastai predict report", body, subtitle=str(folder))


# --- evaluate and cross-validation ------------------------------------------------------------


def _evaluate_cases(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    metrics = _json(folder / "metrics.json")
    rows = _csv(folder / "predictions.csv")
    threshold = float(metrics["threshold"])
    classes = metrics.get("classes")
    if not classes:  # written before metrics.json kept the classes: a case at or over the threshold is positive
        over = {r["predicted"] for r in rows if _float(r["probability"]) >= threshold and "predicted" in r}
        under = {r["predicted"] for r in rows if _float(r["probability"]) < threshold and "predicted" in r}
        if len(over) != 1 or len(under) != 1:
            raise ReportError(f"{folder / 'metrics.json'}: names no classes and predictions.csv does not show them")
        classes = [under.pop(), over.pop()]
    # evaluate --auto-outline's lesion-free rows (label normal): outside the figures, listed in the table
    lesion_free = "lesion_free" in (metrics.get("outline") or {})
    try:
        cases = [{"case_id": r["case_id"], "y": classes.index(r["label"]) if r["label"] in classes or not lesion_free
                  else None, "label": r["label"], "probability": float(r["probability"]),
                  "score": _float(r.get("calibrated_logit", r["probability"])), "threshold": threshold} for r in rows]
    except (KeyError, ValueError) as exc:
        raise ReportError(f"{folder / 'predictions.csv'}: unexpected row ({exc})") from None
    return cases, metrics, classes


def _cv_cases(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    summary = _json(folder / "cv_summary.json")
    if not isinstance(summary, dict) or "folds" not in summary:
        raise ReportError(f"{folder / 'cv_summary.json'}: not a cross-validation summary (no 'folds')")
    thresholds = {int(f["fold"]): float(f["threshold"]) for f in summary["folds"]}
    classes = list((summary.get("config") or {}).get("data", {}).get("classes") or ["0", "1"])
    try:
        cases = [{"case_id": r["case_id"], "fold": int(r["fold"]), "y": int(r["label"]),
                  "probability": float(r["probability"]),
                  # calibrated log-odds share one scale across folds and never tie at 0 or 1 (see engine.cv)
                  "score": _float(r.get("calibrated_logit") or r["probability"]),
                  "threshold": thresholds[int(r["fold"])]} for r in _csv(folder / "oof_predictions.csv")]
    except (KeyError, ValueError) as exc:
        raise ReportError(f"{folder / 'oof_predictions.csv'}: unexpected row ({exc})") from None
    return cases, summary, classes


def _counts(cases: Sequence[dict[str, Any]]) -> dict[str, int]:
    """tp, fp, tn, fn over the cases, each at its own threshold (its fold's in cross-validation)."""
    total = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for t in sorted({c["threshold"] for c in cases}):
        part = [c for c in cases if c["threshold"] == t]
        m = binary_metrics([c["y"] for c in part], [c["probability"] for c in part], t)
        total = {k: total[k] + m[k] for k in total}
    return total


def _outcome(c: dict[str, Any]) -> str:
    pos = c["probability"] >= c["threshold"]
    return ("T" if pos == bool(c["y"]) else "F") + ("P" if pos else "N")


def _scored_page(kind: str, folder: Path) -> str:
    listed, info, classes = (_cv_cases if kind == "cv" else _evaluate_cases)(folder)
    cases = [c for c in listed if c["y"] is not None]  # the figures' cases (not the lesion-free images)
    if not cases:
        raise ReportError(f"{folder}: no cases in the predictions")
    y = np.array([c["y"] for c in cases])
    p = np.array([c["probability"] for c in cases])
    scores = np.array([c["score"] for c in cases])
    scores = scores if np.isfinite(scores).all() else p
    k = _counts(cases)
    sens, spec = k["tp"] / max(1, k["tp"] + k["fn"]), k["tn"] / max(1, k["tn"] + k["fp"])
    if kind == "cv":
        lo, hi = bootstrap_auc_ci(y, scores)
        n_folds = len(info["folds"])
        head = [("folds", n_folds), ("cases", len(cases)), (f"{classes[1]} cases", int(y.sum())),
                ("pooled out-of-fold AUC", f"{info['pooled_oof_auc']:.3f} (95% CI {lo:.3f}-{hi:.3f})"),
                ("sensitivity (each fold's threshold)", sens), ("specificity (each fold's threshold)", spec)]
        head += [(f"{m} per fold, mean \u00b1 sd", f"{v['mean']:.3f} \u00b1 {v['sd']:.3f}")
                 for m, v in info.get("mean_sd", {}).items() if m in ("auc", "sensitivity", "specificity", "ece", "brier")]
        title, sub, where = "breastai cross-validation report", f"{folder}  (out-of-fold predictions)", "each fold's threshold"
    else:
        m = info
        head = [("checkpoint", m.get("checkpoint")), ("data", m.get("data")), ("cases", m.get("n")),
                (f"{classes[1]} cases", m.get("n_pos")),
                ("AUC", f"{m['auc']:.3f} (95% CI {m['auc_ci_low']:.3f}-{m['auc_ci_high']:.3f})"),
                ("threshold", m.get("threshold")), ("sensitivity", m.get("sensitivity")),
                ("specificity", m.get("specificity")), ("PPV", m.get("ppv")), ("NPV", m.get("npv")),
                ("Brier", m.get("brier")), ("ECE", m.get("ece"))]
        free = (m.get("outline") or {}).get("lesion_free")
        if free:
            head.append(("lesion-free images (outside the figures)",
                         f"{free['n']}: {free['given_a_lesion']} given a lesion, {free['called_positive']} called positive"))
            if "auc_all_images" in free:
                head.append(("AUC with them (probability / cancer_probability)",
                             f"{free['auc_all_images']:.3f} / {free['auc_all_images_cancer_probability']:.3f}"))
        title, sub, where = "breastai evaluation report", str(folder), f"threshold {float(m['threshold']):.3f}"
    cm = np.array([[k["tn"], k["fp"]], [k["fn"], k["tp"]]])
    figs = [
        (plots.figure_roc(y, scores, title="ROC", ci=False, band=True, point=(1 - spec, sens)),  # CI: in the summary
         "ROC with 95% bootstrap band"),
        (plots.figure_calibration(y, p), "reliability diagram"),
        (plots.figure_confusion(cm, classes, title=f"Confusion at {where}"), "confusion matrix"),
    ]
    fig_html = "".join(zoom_link(uri, f'<img src="{uri}" alt="{esc(cap)}">', cap)
                       for uri, cap in ((figure_uri(f), c) for f, c in figs))
    rows = [{"case_id": c["case_id"], "fold": c.get("fold"), "probability": c["probability"],
             "label": classes[c["y"]] if c["y"] is not None else c["label"],
             "predicted": classes[int(c["probability"] >= c["threshold"])],
             # a lesion-free image has no cancer: called positive, it is a false positive
             "outcome": _outcome({**c, "y": c["y"] or 0}), "_class": "positive" if c["y"] else ""} for c in listed]
    columns = [Column("case_id", "case"), *([Column("fold", "fold", "num", 0)] if kind == "cv" else []),
               Column("label", "true label"), Column("probability", "probability", "num"),
               Column("predicted", "predicted"), Column("outcome", "outcome")]
    body = (f"<h2>Summary</h2>{key_values(head)}<h2>Figures</h2><div class=\"figs\">{fig_html}</div>"
            f"<h2>Cases</h2><p class=\"sub\">Outcome at {esc(where)}: TP, FP, TN, FN. Click a header to sort.</p>"
            f"{sortable_table(columns, rows)}")
    return page(title, body, subtitle=sub)


def build_report(folder: str | Path, out: str | Path, link_images: bool = False) -> str:
    """The HTML report of ``folder`` (see :func:`folder_kind`), to be written to ``out``.

    Args:
        link_images: a predict report links its full-size images to the files in ``folder``
            (a small page that needs the folder beside it) instead of embedding them.

    Raises:
        ReportError: not a folder a report can be made of.
    """
    folder, out = Path(folder), Path(out)
    kind = folder_kind(folder)
    return _predict_page(folder, out, link_images) if kind == "predict" else _scored_page(kind, folder)


def write_report(folder: str | Path, out: str | Path, link_images: bool = False) -> Path:
    """Write :func:`build_report` to ``out`` atomically; returns ``out``."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"{out} is a folder; --out names the HTML file")
    text = build_report(folder, out, link_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out
