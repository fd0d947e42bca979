"""``breastai evaluate``: a checkpoint on a labelled datalist -> metrics, predictions, plots.

The preprocessing, classes, calibration temperature and operating threshold all come from the
checkpoint (chosen on validation data during training), never from the evaluation data. At the
breast and exam levels (``level``) the images are combined by :mod:`breastai.reporting.levels`: by
the default rule at the checkpoint's image threshold, or by a rule, recalibration and threshold
fitted on other validation data with that structure (``fit_on``), never on the evaluation data.

A segmentation checkpoint is measured on its own outlines (:mod:`breastai.engine.seg_evaluate`).
With a segmenter (``segmenter``) the rows without a traced mask, or every row with
``ignore_masks``, are outlined automatically and scored by :mod:`breastai.engine.auto_outline`:
one score per row (its most malignant lesion; where no lesion is found, the classifier's
whole-image members, else probability 0), and ``metrics.json`` gets ``outline`` (Dice of the
automatic outlines against the traced ones where a row has both, and how many rows had no lesion
found). With ``ignore_masks``, rows labelled :data:`LESION_FREE` are scored too, outside the
malignancy figures (:func:`lesion_free_report`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from breastai.core.distributed import resolve_device
from breastai.core.files import atomic_write_csv, atomic_write_text
from breastai.core.keys import Keys
from breastai.data.frames import read_samples
from breastai.data.grouping import subgroup_columns
from breastai.data.provenance import seen_before
from breastai.engine.auto_outline import pipeline_log_odds, score_outlined, scored_on
from breastai.engine.level_scores import fit_rule_on, image_scores, level_report
from breastai.engine.scoring import NonFiniteScoreError, RecordError, predict_records, row_names, score_part
from breastai.engine.seg_evaluate import evaluate_segmenter
from breastai.models.calibration import apply_temperature
from breastai.models.checkpoint import Checkpoint
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.outliner import Outliner, SegmenterSource, is_segmenter, require_task, resolve_segmenter
from breastai.reporting.levels import LEVELS, default_rule, level_rows
from breastai.reporting.metrics import roc_auc
from breastai.reporting.segmentation import segmentation_summary
from breastai.reporting.subgroups import subgroup_report

__all__ = ["evaluate_checkpoint", "lesion_free_report", "LESION_FREE"]

log = logging.getLogger("breastai")

# The label of an image without a lesion (BUSI's, `prepare --include-normal`): with --auto-outline such
# rows are outlined and scored, and measure lesion presence and false calls, outside the malignancy figures.
LESION_FREE = "normal"


def _score_datalist(ckpt: Checkpoint, checkpoint: str | Path, data: str | Path, dev: Any, n_boot: int,
                    outliner: Outliner | None = None,
                    ignore_masks: bool = False
                    ) -> tuple[list[dict[str, Any]], dict[str, Any], Any, dict[str, Any], list[dict], list[dict]]:
    """Records, raw predictions, probabilities, image-level report and rows of a labelled datalist
    (through the automatic pipeline with ``outliner``), and the ``predictions.csv`` rows of its
    lesion-free images (:func:`lesion_free_report`; none unless every row is outlined)."""
    cfg = ckpt.config
    # With every row outlined, an image labelled lesion-free is a question the pipeline can answer.
    free_label = [LESION_FREE] if outliner is not None and ignore_masks and LESION_FREE not in ckpt.classes else []
    records = read_samples(data, cfg["data"], [*ckpt.classes, *free_label])  # same frame policy as in training
    names = row_names(data, records, cfg["data"].get("reader_options"))
    free = [r[Keys.LABEL] == LESION_FREE for r in records] if free_label else [False] * len(records)
    free_records, free_names = [r for r, f in zip(records, free) if f], [n for n, f in zip(names, free) if f]
    records, names = [r for r, f in zip(records, free) if not f], [n for n, f in zip(names, free) if not f]
    free_rows: list[dict[str, Any]] = []
    # The segmenter is checked apart from the classifier: a pipeline carrying segmenters averaged over
    # folds has trained on images its classifier never saw.
    seg_seen = seen_before(outliner.seen_images, [*records, *free_records]) if outliner is not None else None
    if seg_seen and (seg_seen["train"] or seg_seen["val"]):
        log.warning("warning: %d of the %d images are identical to images the segmenter (%s) was trained on and %d to "
                    "its validation images: the outlines, and the figures built on them, are not an independent test",
                    seg_seen["train"], len(records) + len(free_records), outliner.source, seg_seen["val"])
    try:
        if outliner is not None:
            pred, probs, report, rows = score_outlined(ckpt, records, outliner, ignore_masks, dev, n_boot, names,
                                                       progress=True)
            report["outline"].update(n_seen_in_segmenter_training=seg_seen["train"],
                                     n_seen_in_segmenter_validation=seg_seen["val"])
            if free_records:
                free_rows = lesion_free_report(ckpt, report, rows, free_records, free_names, outliner, dev, n_boot)
        else:
            pred = predict_records(ckpt, records, dev, progress=True, names=names)
            probs, report, rows = score_part(pred, ckpt, n_boot)
    except NonFiniteScoreError as exc:  # the checkpoint's fault, or its inputs': say which checkpoint
        raise NonFiniteScoreError(f"{checkpoint}: {exc}") from exc
    return records, pred, probs, report, rows, free_rows


def lesion_free_report(ckpt: Checkpoint, report: dict[str, Any], rows: list[dict], records: Sequence[dict[str, Any]],
                       names: Sequence[str], outliner: Outliner, dev: Any, n_boot: int) -> list[dict[str, Any]]:
    """Score the rows labelled :data:`LESION_FREE` through the pipeline and add them to ``report['outline']``.

    They enter no malignancy figure (they are neither class); ``outline`` gets the segmentation
    summary over lesion and lesion-free images together (lesion-presence AUC, ``false_lesion_rate``)
    and ``lesion_free``: how many, how many were given a lesion, scored on the whole image, and called
    positive at the checkpoint's threshold. Returns their ``predictions.csv`` rows.

    Raises:
        RecordError: a row labelled lesion-free whose traced mask holds a lesion.
    """
    got = pipeline_log_odds(ckpt, records, outliner, True, dev, names, progress=True)
    for info, name in zip(got.infos, names):
        if info.get("has_lesion"):
            raise RecordError(f"{name}: labelled {LESION_FREE!r} but its traced mask holds a lesion")
        info["has_lesion"] = False  # the label says so, traced mask or not
        info["lesion_found"] = info["n_lesions"] > 0
    scored = np.isfinite(got.log_odds)
    probs = np.where(scored, apply_temperature(np.where(scored, got.log_odds, 0.0), 1.0), 0.0)
    called = probs >= ckpt.threshold
    lesion = [r for r in rows if r.get("mask_source") == "segmenter" and "has_lesion" in r]
    report["outline"].update(segmentation_summary([*lesion, *got.infos], n_boot))
    report["outline"]["lesion_free"] = {
        "n": len(records), "given_a_lesion": int(sum(i["lesion_found"] for i in got.infos)),
        "scored_on_image": int((got.missed & scored).sum()), "called_positive": int(called.sum()),
        "threshold": float(ckpt.threshold), **_all_images_auc(rows, probs, got.infos)}
    out = []
    for rec, p, c, info, ok, miss, o in zip(records, probs, called, got.infos, scored, got.missed, got.ood):
        out.append({"case_id": rec[Keys.CASE_ID], "label": LESION_FREE, "probability": float(p),
                    "predicted": ckpt.classes[int(c)], "ood_score": o, "mask_source": info["mask_source"],
                    "n_lesions": info["n_lesions"], "scored_on": scored_on(ok, miss), "dice": None})
    return out


def _all_images_auc(rows: Sequence[dict[str, Any]], free_probs: np.ndarray, free_infos: Sequence[dict[str, Any]]
                    ) -> dict[str, float]:
    """Malignant against benign and lesion-free images together: ranked by the row probability ``p``
    (``auc_all_images``) and by ``presence x p`` (``auc_all_images_cancer_probability``, predict's
    ``cancer_probability``; docs/experiments.md, "The image's probability of cancer as lesion presence
    times malignancy"). Empty without a malignant row or without every row's presence."""
    q = [r.get("presence_probability") for r in rows] + [i.get("presence_probability") for i in free_infos]
    y = np.array([int(r["label"]) for r in rows] + [0] * len(free_infos))
    if None in q or not y.any():
        return {}
    p = np.concatenate([[float(r["probability"]) for r in rows], free_probs])
    return {"auc_all_images": roc_auc(y, p), "auc_all_images_cancer_probability": roc_auc(y, np.asarray(q, float) * p)}


def evaluate_checkpoint(
    checkpoint: str | Path, data: str | Path, out: str | Path, device: str = "auto", n_boot: int | None = None,
    level: str = "lesion", by: Sequence[str] = (), fit_on: str | Path | None = None,
    segmenter: SegmenterSource | None = None, ignore_masks: bool = False,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the labelled datalist ``data``; write reports into ``out``.

    Writes ``metrics.json``, ``predictions.csv``, ``roc.png`` and ``calibration.png`` (and
    ``subgroups.png`` with ``by``), and nothing when any case cannot be scored.

    Args:
        level: ``lesion`` (one datalist row), ``image``, ``breast`` or ``exam``: what a case is
            (:mod:`breastai.reporting.levels`); ``predictions.csv`` then has one row per case
            with its members, ``n_images`` (distinct images), ``n_lesions``, ``views_present`` and
            ``driver``.
        by: subgroup columns (datalist columns; DICOM header fields of
            :data:`breastai.data.grouping.DICOM_FIELDS`): ``metrics.json`` gets ``subgroups``.
        fit_on: labelled datalist, or a cross-validation ``oof_predictions.csv``, to fit the
            level's rule, recalibration and threshold on (default: the default rule at the
            checkpoint's threshold).
        segmenter: a segmentation checkpoint (path or loaded) or :class:`~breastai.models.outliner.Outliner`:
            rows without a mask are outlined automatically (:mod:`breastai.engine.auto_outline`);
            default: a pipeline checkpoint's own segmenter, else none.
        ignore_masks: outline every row; the datalist's traced masks only measure the outlines
            (Dice in ``metrics.json``'s ``outline``). Needs a segmenter.

    Returns:
        The metrics dict (see :func:`breastai.metrics.evaluation_report`).

    Raises:
        CheckpointError: the checkpoint is missing, corrupted or unusable, or of the wrong kind (a
            segmenter as the classifier, a classifier as the segmenter).
        RecordError: an image or mask of the datalist cannot be read (naming the datalist row).
        NonFiniteScoreError: the checkpoint scores a case NaN or infinity (naming the checkpoint
            and the cases).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():  # found now, not after every image has been scored
        raise ValueError(f"{out} is a file; --out names the report folder")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    if fit_on is not None and level == "lesion":
        raise ValueError("--fit-on fits a rule that combines images: give --level image, breast or exam")
    ckpt = load_checkpoint(checkpoint)
    if is_segmenter(ckpt):
        given = [flag for flag, v in (("--segmenter", segmenter is not None), ("--auto-outline", ignore_masks),
                                      ("--level", level != "lesion"), ("--by", bool(by)), ("--fit-on", fit_on is not None))
                 if v]
        if given:
            raise ValueError(f"{checkpoint} is a segmenter, measured on its own outlines: {', '.join(given)} "
                             "apply to a classifier checkpoint")
        return evaluate_segmenter(ckpt, checkpoint, data, out, device, n_boot)
    require_task(ckpt, "classification", str(checkpoint))
    if ignore_masks and segmenter is None and ckpt.segmenter is None:
        raise ValueError("--auto-outline needs --segmenter (or a pipeline checkpoint): the segmenter draws the "
                         "outlines the traced masks are set aside for")
    cfg = ckpt.config
    classes = ckpt.classes
    dev = resolve_device(device)
    outliner = resolve_segmenter(segmenter, ckpt, dev)  # a pipeline checkpoint brings its own
    n_boot = int(n_boot if n_boot is not None else cfg.get("eval", {}).get("bootstrap", 2000))
    records, pred, probs, report, rows, free_rows = _score_datalist(ckpt, checkpoint, data, dev, n_boot, outliner,
                                                                    ignore_masks)
    flagged = report.get("ood_flagged")  # of the images, whatever level the report is at
    seen = seen_before(ckpt.seen_images, records)
    if seen["train"] is None:
        log.info("note: %s keeps no digests of its training images, so overlap with this data cannot be checked",
                 Path(checkpoint).name)
    elif seen["train"] or seen["val"]:
        log.warning("warning: %d of the %d evaluation images are identical to images this checkpoint was trained on "
                    "and %d to its validation images: these figures are not an independent test",
                    seen["train"], len(records), seen["val"])
    y = pred["label"].astype(int)
    table: tuple[list[str], list[dict[str, Any]]]
    if level == "lesion":
        if by:
            report["subgroups"] = subgroup_report(y, probs, ckpt.threshold, subgroup_columns(records, by, str(data)),
                                                  scores=[r["calibrated_logit"] for r in rows], n_boot=n_boot)
        report["level"] = "lesion"
        extra = [k for k in ("ood_score", "mask_source", "n_lesions", "scored_on", "dice") if rows and k in rows[0]]
        table = (["case_id", "label", "probability", "predicted", *extra], [
            {"case_id": c, "label": classes[yy], "probability": float(p), "predicted": classes[int(p >= ckpt.threshold)],
             **{k: row[k] for k in extra}}
            for c, yy, p, row in zip(pred["case_id"], y, probs, rows)] + [
            {k: r.get(k) for k in ("case_id", "label", "probability", "predicted", *extra)} for r in free_rows])
    else:
        def score(path: Path) -> tuple[list[dict[str, Any]], list[dict]]:
            val_records, _, _, _, val_rows, _ = _score_datalist(ckpt, checkpoint, path, dev, n_boot, outliner, ignore_masks)
            return val_records, val_rows

        rule = default_rule(level) if fit_on is None else fit_rule_on(
            fit_on, level, score, cfg.get("eval", {}).get("threshold_method", "youden"))
        row_auc = {k: report[k] for k in ("auc", "auc_ci_low", "auc_ci_high", "n", "n_pos")}
        outline = report.get("outline")
        report, groups = level_report(image_scores(records, rows, by, str(data)), rule, ckpt, n_boot, by, str(data))
        report["lesion_level"] = row_auc  # the same rows, one case each
        if outline is not None:
            report["outline"] = outline
        y = np.array([g.label for g in groups])
        probs = np.array([g.probability for g in groups])
        lrows = level_rows(groups, report["threshold"], classes)
        # the level's id under case_id: a case of this report is a breast or an exam (`breastai report` reads it so)
        table = (["case_id", "label", "probability", "predicted", "members", "n_images", "n_lesions", "views_present",
                  "laterality", "driver"], [{**r, "case_id": r["id"], "label": r["truth"]} for r in lrows])
    if flagged is not None:
        report["ood_flagged"] = flagged
    report.update(checkpoint=str(checkpoint), data=str(data), classes=list(classes), temperature=ckpt.temperature,
                  n_seen_in_training=seen["train"], n_seen_in_validation=seen["val"],
                  recalibration=ckpt.recalibration[-1].summary() if ckpt.recalibration else None,
                  adaptation=ckpt.adaptation[-1].summary() if ckpt.adaptation else None)
    if ckpt.adaptation:  # unlabeled, so no label leaked; reported because the statistics saw these images
        report["n_seen_in_adaptation"] = seen_before({"val": ckpt.adaptation[-1].image_digests}, records)["val"]
    # The local cases of a recalibration were fitted on, as validation images are.
    refit = seen_before({"val": ckpt.recalibration[-1].image_digests}, records)["val"] if ckpt.recalibration else None
    if refit:
        report["n_seen_in_recalibration"] = refit
        log.warning("warning: %d of the %d evaluation images are local cases %s was recalibrated on: these "
                    "figures are not an independent test", refit, len(records), Path(checkpoint).name)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1, default=float))
    atomic_write_csv(out / "predictions.csv", table[0], table[1], exact=True)
    if flagged:
        log.warning("warning: %.0f%% of the evaluation images are unlike the images this checkpoint was trained on "
                    "(ood_score > 1 in predictions.csv at --level lesion)", 100 * flagged)
    from breastai.reporting import plots

    plots.plot_roc(y, probs, out / "roc.png", title=f"ROC (AUC {report['auc']:.3f})")
    plots.plot_calibration(y, probs, out / "calibration.png")
    if by:
        plots.plot_subgroups(report["subgroups"], out / "subgroups.png", title=f"AUC by subgroup ({level} level)")
    return report
