"""Scored datalist rows at the breast and exam level, and per subgroup, for ``evaluate`` and cross-validation.

The combining itself is :mod:`breastai.reporting.levels` (shared with ``predict``); this module
joins scored rows (:func:`breastai.engine.scoring.score_part`) with their datalist records, finds
the level's rule (the default, or fitted on validation data with the level's structure) and
reports. The rows of :func:`breastai.engine.scoring.score_part` carry ``calibrated_logit``, the
scale every level combines.

A row of ``evaluate --segmenter`` (:mod:`breastai.engine.auto_outline`) where no lesion was found
is an image with 0 lesions and no score, as predict's level tables take it: it never enters its
breast's or exam's combination, and a breast or exam with nothing found in any image is scored
below every other (probability 0, :func:`breastai.reporting.levels.aggregate` with
``unscored_last``), as such a row is at the row level.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from breastai.core.keys import Keys
from breastai.data.grouping import grouping_of, subgroup_columns
from breastai.models.checkpoint import Checkpoint
from breastai.reporting.levels import (ImageScore, LevelError, LevelRule, LevelScore, aggregate, default_rule,
                                      fit_level_rule)
from breastai.reporting.metrics import bootstrap_auc_ci, ece, evaluation_report, roc_auc
from breastai.reporting.subgroups import subgroup_report

__all__ = ["MIXED", "image_scores", "level_groups", "fit_rule_on", "level_report", "pooled_level_summary"]

MIXED = "(mixed)"  # the subgroup value of a breast or exam whose images differ in it


def image_scores(records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], by: Sequence[str] = (),
                 where: str = "the datalist") -> list[ImageScore]:
    """The scored ``rows`` joined with their ``records`` (same order) as :class:`ImageScore`, with
    the ``by`` subgroup values in ``fields`` and, for rows of an automatic outline, their
    ``n_lesions`` (0: no lesion found, the row then unscored unless the classifier's whole-image
    members scored it, ``scored_on`` ``image``).

    Raises:
        ValueError: rows and records differ, or a ``by`` column is missing (see
            :func:`breastai.data.grouping.subgroup_columns`).
    """
    if [str(r[Keys.CASE_ID]) for r in records] != [str(r["case_id"]) for r in rows]:
        raise ValueError("scored rows and datalist records are not the same cases in the same order")
    cols = subgroup_columns(records, list(by), where) if by else {}
    out = []
    for i, (rec, row) in enumerate(zip(records, rows)):
        g = grouping_of(rec)
        image = str(rec.get(Keys.IMAGE)) + (f"#{rec[Keys.FRAME]}" if rec.get(Keys.FRAME) is not None else "")
        n_lesions = int(row.get("n_lesions", 1))
        scored = n_lesions > 0 or row.get("scored_on") == "image"  # no lesion, but whole-image members ranked it
        out.append(ImageScore(case_id=str(row["case_id"]),
                              log_odds=float(row["calibrated_logit"]) if scored else None,
                              label=int(row["label"]), exam=g[Keys.EXAM], laterality=g[Keys.LATERALITY],
                              view=g[Keys.VIEW], image=image, fields={c: v[i] for c, v in cols.items()},
                              n_lesions=n_lesions))
    return out


def level_groups(scores: Sequence[ImageScore], rule: LevelRule, where: str = "the datalist") -> list[LevelScore]:
    """:func:`breastai.reporting.levels.aggregate`, refusing images that cannot be placed.

    Raises:
        LevelError: images without an exam (or, at the breast level, a side), counted and named.
    """
    groups, left_out = aggregate(scores, rule, unscored_last=True)
    if left_out:
        need = "an exam and a laterality" if rule.level == "breast" else "an exam"
        raise LevelError(f"{where}: {len(left_out)} of {len(scores)} image(s) lack {need} for the {rule.level} level "
                         f"(e.g. case_id {left_out[0]}); give the datalist 'exam' (or 'group') and 'laterality' "
                         "columns, or DICOM images whose headers carry them")
    return groups


def _scored_csv(path: Path) -> list[ImageScore]:
    """Already scored rows (``oof_predictions.csv`` of a cross-validation run) as :class:`ImageScore`."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        g = grouping_of(r)
        out.append(ImageScore(case_id=r["case_id"], log_odds=float(r["calibrated_logit"]), label=int(r["label"]),
                              exam=g[Keys.EXAM], laterality=g[Keys.LATERALITY], view=g[Keys.VIEW],
                              image=r.get("image") or None))
    return out


def fit_rule_on(source: str | Path, level: str, score: Any, threshold_method: str = "youden") -> LevelRule:
    """The level's rule fitted on ``source``: a cross-validation run's ``oof_predictions.csv`` (scored
    already, by the folds' models) or a labelled datalist (scored by ``score(path)``, which returns
    its records and :func:`~breastai.engine.scoring.score_part` rows).

    Raises:
        LevelError: ``source`` cannot give the level (no grouping, one class; named).
    """
    source = Path(source)
    header = ""
    if source.suffix.lower() == ".csv" and source.is_file():
        with open(source, encoding="utf-8-sig") as fh:
            header = fh.readline()
    if "calibrated_logit" in header.strip().split(","):
        scores = _scored_csv(source)
    else:
        records, rows = score(source)
        scores = image_scores(records, rows, where=f"--fit-on {source}")
    level_groups(scores, LevelRule(level=level), where=f"--fit-on {source}")
    try:
        return fit_level_rule(scores, level, threshold_method=threshold_method, source=str(source))
    except LevelError as exc:
        raise LevelError(f"--fit-on {source}: {exc}") from exc


def level_report(scores: Sequence[ImageScore], rule: LevelRule, ckpt: Checkpoint, n_boot: int,
                 by: Sequence[str] = (), where: str = "the datalist") -> tuple[dict[str, Any], list[Any]]:
    """Metrics of ``scores`` combined at ``rule.level`` (threshold: the rule's, else the checkpoint's),
    with ``subgroups`` when ``by`` names columns.

    Returns:
        The report (:func:`~breastai.reporting.metrics.evaluation_report` plus ``level``,
        ``level_rule``, ``n_images`` (distinct images), ``n_lesions`` and ``subgroups``) and the
        level's scores.
    """
    groups = level_groups(scores, rule, where)
    y = np.array([g.label for g in groups], dtype=np.int64)
    if y.min() == y.max():
        raise LevelError(f"{where}: all {y.size} {rule.level}s are {'malignant' if y[0] else 'benign'}; "
                         f"metrics at the {rule.level} level need both classes")
    z = np.array([g.log_odds for g in groups])
    p = np.array([g.probability for g in groups])
    threshold = ckpt.threshold if rule.threshold is None else rule.threshold
    report = evaluation_report(y, p, threshold, n_boot=n_boot, scores=z)
    report.update(level=rule.level, level_rule=rule.to_dict(), n_images=len({s.image or s.case_id for s in scores}),
                  n_lesions=sum(s.n_lesions for s in scores))
    if by:
        cols = {c: [g.fields.get(c, MIXED) for g in groups] for c in by}
        report["subgroups"] = subgroup_report(y, p, threshold, cols, scores=z, n_boot=n_boot)
    return report, groups


def pooled_level_summary(scores: Sequence[ImageScore], n_boot: int) -> dict[str, dict[str, Any]]:
    """Pooled out-of-fold AUC (bootstrap CI) and ECE at the breast and exam levels, by the default rule.

    Levels the rows cannot give (no grouping, one class, or every group a single row) are left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for level in ("breast", "exam"):
        groups, left_out = aggregate(scores, default_rule(level), unscored_last=True)
        y = np.array([g.label for g in groups])
        if left_out or not groups or len(set(y.tolist())) < 2 or all(len(g.members) == 1 for g in groups):
            continue
        z = np.array([g.log_odds for g in groups])
        lo, hi = bootstrap_auc_ci(y, z, n_boot=max(n_boot, 1))
        out[level] = {"n": len(groups), "n_malignant": int(y.sum()), "auc": roc_auc(y, z), "auc_ci_low": lo,
                      "auc_ci_high": hi, "ece": ece(y, np.array([g.probability for g in groups])),
                      "rule": default_rule(level).source}
    return out
