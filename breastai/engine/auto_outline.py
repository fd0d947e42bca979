"""``evaluate`` with a segmenter: rows outlined automatically, each found lesion scored, one score per row.

The rule, fixed before any held-out figure was seen (docs/experiments.md, "Automatic outlines"):

* Which rows: every row with ``ignore_masks`` (``--auto-outline``: the datalist's traced masks are
  not used for scoring, only to measure the outlines against), else only the rows without a mask.
  A row scored on its traced mask has ``mask_source`` ``given``.
* Each lesion the segmenter finds (:class:`~breastai.models.outliner.Outliner`, on the image as
  stored) is scored by the classifier with its own mask, as a traced mask would be (the datalist's
  own preset: crop, outline channel, radiomics).
* With ``outline_as="box"`` each found lesion is given to the classifier as the bounding box of
  its mask (:meth:`~breastai.data.readers.masks.LesionBox.around`) instead of the mask: the
  classifier, trained with coarse outlines, then reads position and extent but not the
  segmenter's edge (rule and outcome in docs/experiments.md).
* A row's score is the highest calibrated log-odds over its lesions (the malignant one decides).
  A row where no lesion is found is scored by the classifier's whole-image members, if it has any
  (:func:`whole_image_log_odds`: their own calibrated log-odds averaged, as ``predict`` gives
  ``image_probability``); otherwise it gets probability 0 (calibrated log-odds
  :data:`NO_LESION_LOG_ODDS`, below every found lesion): the pipeline said nothing, which a reader
  takes as "nothing suspicious". Their number, how many of them were positive and how many the
  whole image scored are reported.
* Where the row has a traced mask: Dice, IoU and HD95 (pixels of the stored image) of the union of
  the found lesions against it (a lesion image where nothing was found counts Dice 0, and is
  ``missed``), summarised by :func:`breastai.reporting.segmentation.segmentation_summary`.
* A row's ``ood_score`` is that of the lesion whose score it carries (none where nothing was
  found); ``ood_flagged`` is the share of rows with a score above 1.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from breastai.core.keys import Keys
from breastai.data.geometry import reader_to_original
from breastai.data.readers.masks import LesionBox, load_mask
from breastai.data.readers.registry import ImageReadError, max_pixels_option
from breastai.engine.scoring import RecordError, members_log_odds, predict_records, score_part
from breastai.models.calibration import calibrated_logit, recalibrated_log_odds
from breastai.models.checkpoint import Checkpoint, reads_mask
from breastai.models.outliner import Outliner
from breastai.reporting.levels import NO_LESION_LOG_ODDS, unscored_floor
from breastai.reporting.segmentation import mask_metrics, segmentation_summary

__all__ = ["NO_LESION_LOG_ODDS", "OUTLINE_AS", "OUTLINE_FACTS", "PipelineScores", "whole_image_log_odds",
           "outlined_log_odds", "outline_row", "lesion_records", "pipeline_log_odds", "score_outlined", "scored_on", "outline_report",
           "traced_on_stored"]

OUTLINE_AS = ("outline", "box")  # what of a found lesion the classifier is given
# what an outlined row's facts add to its row, beside mask_source, n_lesions and dice
OUTLINE_FACTS = ("presence_probability", "has_lesion", "lesion_found", "iou", "hd95")


def traced_on_stored(rec: dict[str, Any], image: np.ndarray, meta: dict[str, Any], reader_options: dict[str, Any]
                     ) -> np.ndarray | None:
    """A row's traced mask on the image as stored (None: the row has none), for comparing with a
    segmenter's outline there. It is moved like any mask onto the reader's grid, then back, so masks
    drawn on either grid work."""
    traced = rec.get(Keys.MASK) or []
    if not traced:
        return None
    return reader_to_original(load_mask(traced, image.shape, meta, max_pixels_option(reader_options)), meta) > 0.5


def outline_row(rec: dict[str, Any], outliner: Outliner, name: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The lesion masks (stored geometry) of one row, and its outline facts (with Dice against a traced mask)."""
    try:
        image, meta = outliner.read(rec[Keys.IMAGE], rec.get(Keys.FRAME))
        found = outliner.outline(image, meta, name)
        truth = traced_on_stored(rec, image, meta, outliner.reader_options)
    except Exception as exc:  # any failure names the row
        msg = str(exc) if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"
        raise RecordError(f"{name}: segmenter: {msg}") from exc
    masks = [les.mask for les in found.lesions]
    info: dict[str, Any] = {"mask_source": "segmenter", "n_lesions": len(masks),
                            "presence_probability": round(found.presence, 6)}
    if truth is not None:
        union = np.logical_or.reduce(masks) if masks else np.zeros(truth.shape, bool)
        info.update({"has_lesion": bool(truth.any()), "lesion_found": bool(masks), **mask_metrics(union, truth)})
    return masks, info


def lesion_records(records: Sequence[dict[str, Any]], outliners: Sequence[Outliner], names: Sequence[str],
                   ignore_masks: bool, outline_as: str = "outline"
                   ) -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]]]:
    """One record per lesion to score, as the pipeline scores rows: a row's own mask where it has one
    (unless ``ignore_masks``; a given mask wins, as in predict), else each lesion ``outliners[i]``
    finds on the stored image (its mask, or with ``outline_as="box"`` its bounding box), the case_id
    suffixed ``_lK`` where a row has several.

    Returns:
        The lesion records, the row index of each, and each row's outline facts (:func:`outline_row`'s;
        ``mask_source`` ``given`` for a row's own mask).

    Raises:
        RecordError: a row's image cannot be read or outlined (naming the row).
    """
    if outline_as not in OUTLINE_AS:
        raise ValueError(f"outline_as must be one of {OUTLINE_AS}, got {outline_as!r}")
    lesions: list[dict[str, Any]] = []
    row_of: list[int] = []
    infos: list[dict[str, Any]] = []
    for i, (rec, outliner, name) in enumerate(zip(records, outliners, names)):
        if rec.get(Keys.MASK) and not ignore_masks:
            masks, info = [rec[Keys.MASK]], {"mask_source": "given", "n_lesions": 1}
        else:
            masks, info = outline_row(rec, outliner, name)
            if outline_as == "box":
                masks = [LesionBox.around(m) for m in masks]
        for k, m in enumerate(masks, 1):
            cid = rec[Keys.CASE_ID] if len(masks) == 1 else f"{rec[Keys.CASE_ID]}_l{k}"
            lesions.append({**rec, Keys.MASK: m, Keys.CASE_ID: cid})
            row_of.append(i)
        infos.append(info)
    return lesions, row_of, infos


def outlined_log_odds(members: Sequence[Checkpoint], records: Sequence[dict[str, Any]],
                      outliners: Sequence[Outliner], device: torch.device, names: Sequence[str],
                      per_lesion: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each member's image-level calibrated log-odds on automatic outlines, as the pipeline's rule scores a row.

    Row ``i`` is outlined by ``outliners[i]`` (its traced mask, if any, is ignored); every found
    lesion is scored by every member with its own mask, and a member's log-odds for the row is the
    highest over the row's lesions. With non-negative weights and members that do not read the mask
    (a whole-image model) this is exactly the row's combined score under the pipeline's rule; with
    two mask-reading members it is the members' maxima combined, a bound the rule can only meet,
    unless ``per_lesion`` combines them on each lesion first (their mean, for tied weights:
    :func:`breastai.engine.ensemble_outlines.tied_lesion_mean`).

    Args:
        members: the classifier checkpoints (not ensembles).
        records: the datalist's samples.
        outliners: one segmenter per record (for out-of-fold outlines, the one that did not train on it).
        device: where the members run.
        names: how errors name each row.
        per_lesion: maps the lesions' (L, m) log-odds to (L, k) before each row's highest is taken
            (the mean of several mask-reading members, as one lesion's combined score has it).

    Returns:
        ``(log_odds (n, m or k), found (n,))``: rows where no lesion was found have ``found`` False and
        log-odds ``-inf`` (the pipeline scores none of them).

    Raises:
        RecordError: a row's image cannot be read or outlined (naming the row).
    """
    # the traced masks set aside (no Dice is wanted here), every row outlined
    lesions, row_of, _ = lesion_records([{**r, Keys.MASK: None} for r in records], outliners, names, True)
    c = np.zeros((0, len(members)))
    if lesions:
        c, _ = members_log_odds(members, lesions, device, names=[names[i] for i in row_of])
    if per_lesion is not None:
        c = per_lesion(c)
    best = np.full((len(records), c.shape[1]), -np.inf)
    np.maximum.at(best, np.asarray(row_of, dtype=int), c)
    return best, np.isfinite(best[:, 0])


def whole_image_log_odds(members: Sequence[Checkpoint], records: Sequence[dict[str, Any]], device: torch.device,
                   names: Sequence[str]) -> np.ndarray | None:
    """The score the pipeline gives rows where no lesion was found: the mean calibrated log-odds of the
    members that read the whole image and no mask (:func:`~breastai.models.checkpoint.reads_mask`),
    each with its own calibration; None when every member reads the lesion (the row then gets 0)."""
    whole = [m for m in members if not reads_mask(m)]
    if not whole:
        return None
    c, _ = members_log_odds(whole, [{**r, Keys.MASK: None} for r in records], device, names=names)
    return c.mean(1)


class PipelineScores(NamedTuple):
    """Rows scored through the automatic pipeline, before any label is read.

    Attributes:
        log_odds: (n,) each row's calibrated log-odds; ``-inf`` where nothing scored it (no lesion
            found and no whole-image member).
        missed: (n,) no lesion was found (the row was outlined and came back empty).
        infos: per row, :func:`outline_row`'s facts (``mask_source``, ``n_lesions``, presence, Dice...).
        ood: per row, the OOD score of the lesion whose score it carries (None: none scored).
    """

    log_odds: np.ndarray
    missed: np.ndarray
    infos: list[dict[str, Any]]
    ood: list[float | None]


def pipeline_log_odds(ckpt: Checkpoint, records: Sequence[dict[str, Any]], outliner: Outliner, ignore_masks: bool,
                      device: torch.device, names: Sequence[str], progress: bool = False,
                      outline_as: str = "outline") -> PipelineScores:
    """Each row's calibrated log-odds under the module's rule (arguments as for :func:`score_outlined`);
    no label is read, so lesion-free images are scored the same way."""
    lesions, row_of, infos = lesion_records(records, [outliner] * len(records), names, ignore_masks, outline_as)
    best = np.full(len(records), -np.inf)
    row_ood: list[float | None] = [None] * len(records)
    if lesions:
        pred = predict_records(ckpt, lesions, device, progress=progress, names=[names[i] for i in row_of])
        z = calibrated_logit(pred["logit"], ckpt.calibration)
        np.maximum.at(best, np.asarray(row_of), z)
        if ckpt.ood is not None and pred.get("features"):
            # A row's OOD score is that of the lesion whose score it carries.
            for i, zj, o in zip(row_of, z, ckpt.ood.score(pred["features"])):
                if zj == best[i] and row_ood[i] is None:
                    row_ood[i] = float(o)
    missed = ~np.isfinite(best)
    if missed.any():  # whole-image members still rank an image where no lesion is found
        idx = np.flatnonzero(missed)
        whole = whole_image_log_odds(ckpt.members if ckpt.is_ensemble else [ckpt], [records[i] for i in idx], device,
                                     [names[i] for i in idx])
        if whole is not None:  # an ensemble's site recalibration (in its weights) covers these rows too
            best[idx] = recalibrated_log_odds(whole, ckpt.recalibration or []) if ckpt.is_ensemble else whole
    return PipelineScores(best, missed, infos, row_ood)


def score_outlined(ckpt: Checkpoint, records: Sequence[dict[str, Any]], outliner: Outliner, ignore_masks: bool,
                   device: torch.device, n_boot: int, names: Sequence[str],
                   progress: bool = False, outline_as: str = "outline") -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any], list[dict]]:
    """Score datalist rows through the automatic pipeline (the module's rule), one score per row.

    Args:
        ckpt: the classifier checkpoint.
        records: the datalist's samples (:func:`breastai.data.frames.read_samples`).
        outliner: the segmenter.
        ignore_masks: outline every row, the traced masks only measuring the outlines (else only
            the rows without a mask are outlined).
        device: where the classifier runs.
        n_boot: bootstrap resamples of the AUC's CI.
        names: how errors name each row (:func:`breastai.engine.scoring.row_names`).
        progress: show the classifier's progress bar.
        outline_as: give the classifier each found lesion's ``outline`` (mask) or its ``box``.

    Returns:
        ``pred`` (per row: ``label``, ``case_id``, ``logit``), the calibrated probabilities, the report
        (:func:`~breastai.engine.scoring.score_part`'s, plus ``outline``) and per-row rows with
        ``mask_source``, ``n_lesions``, ``scored_on`` (``lesion``: its lesions decided; ``image``: none was
        found and the whole-image members scored it; None: probability 0) and, against a traced mask, ``dice``.

    Raises:
        RecordError: a row's image or mask cannot be read (naming the row).
        NonFiniteScoreError: a lesion's score is NaN or infinite.
    """
    best, missed, infos, row_ood = pipeline_log_odds(ckpt, records, outliner, ignore_masks, device, names, progress,
                                                     outline_as)
    cal = ckpt.calibration
    scored = np.isfinite(best)
    best[~scored] = unscored_floor(best[scored])
    labels = np.array([ckpt.classes.index(r[Keys.LABEL]) for r in records])
    # The row's raw logit is the one its best calibrated log-odds came from, so score_part calibrates it back.
    row_pred = {"label": labels, "case_id": [r[Keys.CASE_ID] for r in records],
                "logit": best * float(cal.get("temperature", 1.0)) + float(cal.get("logit_offset", 0.0))}
    probs, report, rows = score_part(row_pred, ckpt, n_boot)
    probs[~scored] = 0.0
    for row, info, miss, ok, o in zip(rows, infos, missed, scored, row_ood):
        row.update(mask_source=info["mask_source"], n_lesions=info["n_lesions"], dice=info.get("dice"),
                   scored_on=scored_on(ok, miss), **{k: info[k] for k in OUTLINE_FACTS if k in info})
        if not ok:
            row["probability"] = 0.0
        if ckpt.ood is not None:
            row["ood_score"] = o  # None where no lesion was found: nothing was scored
    scored_ood = [o for o in row_ood if o is not None]
    if scored_ood:
        report["ood_flagged"] = float(np.mean(np.asarray(scored_ood) > 1.0))
    report["outline"] = outline_report(infos, missed, scored, labels, outliner, ignore_masks)
    return row_pred, probs, report, rows


def scored_on(scored: bool, missed: bool) -> str | None:
    """A row's ``scored_on``: ``lesion``, ``image`` (no lesion found, the whole image scored it) or None."""
    return None if not scored else "image" if missed else "lesion"


def outline_report(infos: Sequence[dict[str, Any]], missed: np.ndarray, scored: np.ndarray, labels: np.ndarray,
                   outliner: Outliner, ignore_masks: bool) -> dict[str, Any]:
    """``metrics.json``'s ``outline``: what was outlined and found, and the outlines against the traced masks
    (``infos``: :func:`outline_row`'s facts, or rows carrying them; ``labels`` 1 for a positive row)."""
    outlined = [info for info in infos if info["mask_source"] == "segmenter"]
    measured = [info for info in outlined if "has_lesion" in info]
    return {
        "segmenter": outliner.source, "traced_masks": "ignored" if ignore_masks else "used where present",
        "n_outlined": len(outlined), "n_lesions_scored": sum(info["n_lesions"] for info in outlined),
        "n_no_lesion_found": int(missed.sum()), "n_no_lesion_positive": int((missed & (labels == 1)).sum()),
        "n_no_lesion_scored_on_image": int((missed & scored).sum()),
        **(segmentation_summary(measured) if measured else {}),
    }
