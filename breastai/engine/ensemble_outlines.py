"""Ensembles whose combination is fitted on automatic outlines (``breastai ensemble --segmenter-run``).

A classifier that will score a segmenter's outlines should have its members' combination fitted
on such outlines, not on traced ones. Each validation image is outlined by the fold of a segmenter
cross-validation run that held it out (out-of-fold outlines: what a new image gets), each member's
log-odds is the highest over the lesions found, and images where nothing was found are left out
of the fit (the pipeline ranks them by its whole-image members, if it has any, else at 0;
:mod:`breastai.engine.auto_outline`).

* Cross-validation classifier runs (:func:`fit_fold_on_outlines`, fold by fold): each fold's
  checkpoint is a pipeline carrying that fold's segmenter, its held-out fold scored as
  ``evaluate --auto-outline`` scores it.
* Single-split runs sharing their validation part (:func:`build_single_on_outlines`): one
  combination; the checkpoint is a pipeline carrying the segmenter run's folds averaged (a
  segmenter ensemble, what a new image is best outlined with), its ``split=test`` rows, if any,
  each outlined by the fold that held it out and only scored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from breastai.core.keys import Keys
from breastai.engine.auto_outline import whole_image_log_odds, outlined_log_odds, score_outlined
from breastai.engine.bundle import bundle_pipeline
from breastai.engine.cv import load_cv_summary
from breastai.engine.ensemble import ensemble_state, fit_combiner, load_single_runs
from breastai.engine.seg_ensemble import segmenter_ensemble
from breastai.models.checkpoint import Checkpoint, reads_mask
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.outliner import Outliner
from breastai.reporting.metrics import choose_threshold, evaluation_report, roc_auc

__all__ = ["OutlineFit", "fit_on_outlines", "tied_lesion_mean", "fit_fold_on_outlines", "build_single_on_outlines",
           "SegmenterFolds"]

log = logging.getLogger("breastai")


def fitted_on(segmenter_run: Path) -> str:
    """How an ensemble's configuration names a fit on automatic outlines (``ensemble.fitted_on``, which
    ``predict`` reads to warn when a reader's mask comes in)."""
    return f"automatic outlines, out of fold ({segmenter_run})"


def fit_on_outlines(members: Sequence[Checkpoint], records: Sequence[dict[str, Any]], outliners: Sequence[Any],
                    combine: str, device: Any, names: Sequence[str]) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The members' combination fitted on automatic outlines, as the pipeline will score a row.

    Row ``i`` is outlined by ``outliners[i]`` (for out-of-fold outlines, the segmenter that did not
    train on it); each member's log-odds is the highest over the found lesions
    (:func:`~breastai.engine.auto_outline.outlined_log_odds`), and rows where nothing was found are
    left out of the fit (the pipeline ranks them by its whole-image members alone, or at 0). With
    ``combine="mean"`` and several members reading the mask (two crop seeds), each of them enters as
    their mean on one lesion, highest over the row's lesions (:func:`tied_lesion_mean`), which is
    exactly the pipeline's score of the row under tied weights.

    Returns:
        ``(weights, bias, log_odds (n, m), found (n,))``.

    Raises:
        ValueError: the rows with a lesion found hold one class only.
    """
    reading = np.array([reads_mask(m) for m in members])
    per_lesion = tied_lesion_mean(reading) if combine == "mean" and reading.sum() > 1 else None
    c, found = outlined_log_odds(members, records, outliners, device, names, per_lesion=per_lesion)
    y = np.array([members[0].classes.index(r["label"]) for r in records])
    try:
        weights, bias = fit_combiner(c[found], y[found], combine)
    except ValueError as exc:
        raise ValueError(f"{int(found.sum())} of {len(records)} images have a lesion found, too few to fit the "
                         f"combination on ({exc})") from exc
    return weights, bias, c, found


def tied_lesion_mean(reading: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A ``per_lesion`` map for :func:`~breastai.engine.auto_outline.outlined_log_odds`: the columns of
    the members that read the mask (``reading``, bool per member) replaced on each lesion by their
    mean. With tied weights a lesion's combined score is that mean plus the (lesion-independent)
    whole-image members', so the row's highest is taken over the mean, not member by member."""
    def per_lesion(z: np.ndarray) -> np.ndarray:
        z = np.array(z, dtype=np.float64, copy=True)
        if len(z):
            z[:, reading] = z[:, reading].mean(1, keepdims=True)
        return z

    return per_lesion


class SegmenterFolds:
    """A segmenter CV run's fold checkpoints, loaded once each, and which fold held out each case.

    Raises:
        ValueError: the run holds out the classifiers' cases in other folds (``cls_folds``: CV
            classifiers), or never holds out one of ``cases`` (single-split classifiers).
    """

    def __init__(self, run: Path, cls_folds: dict[str, int] | None, device: Any = "cpu", cases: Sequence[str] = ()):
        self.run, self.device = run, device
        held = {str(p["case_id"]): int(p["fold"]) for p in load_cv_summary(run)["oof_predictions"]}
        if cls_folds is not None:
            moved = sorted(c for c, f in cls_folds.items() if held.get(c) != f)
            if moved:
                raise ValueError(f"{run}: the segmenter run holds out case {moved[0]!r} ({len(moved)} cases in all) in "
                                 "another fold than the classifiers, or not at all: train it on the same fold column "
                                 "(a datalist with a 'fold' column, --folds K)")
        never = sorted(c for c in cases if c not in held)
        if never:
            raise ValueError(f"{run}: the segmenter run never held out case {never[0]!r} ({len(never)} cases in all), "
                             "so no fold of it can outline that image as a new one: train the segmenter with --folds K "
                             "on a datalist that holds the classifiers' images")
        self.fold_of = held
        self.folds = sorted(set(held.values()))
        self._loaded: dict[int, Any] = {}

    def checkpoint(self, fold: int) -> Checkpoint:
        """Fold ``fold``'s segmenter checkpoint, loaded on first use."""
        self.outliner(fold)
        return self._loaded[fold][0]

    def outliner(self, fold: int) -> Any:
        """Fold ``fold``'s segmenter at work (an :class:`~breastai.models.outliner.Outliner`)."""
        if fold not in self._loaded:
            path = self.run / f"fold{fold}" / "best.pt"
            ckpt = load_checkpoint(path)
            self._loaded[fold] = (ckpt, Outliner(ckpt, self.device, str(path)))
        return self._loaded[fold][1]


def fit_fold_on_outlines(members: Sequence[Checkpoint], sources: Sequence[str], combine: str, records: Sequence[dict],
                         names: Sequence[str], va: Sequence[int], te: Sequence[int], fold: int, seg: SegmenterFolds,
                         cfg: dict[str, Any], dev: Any, n_boot: int) -> tuple[Checkpoint, dict[str, Any], list[dict]]:
    """One fold of CV classifier runs: the combination fitted on the fold's validation part
    (:func:`_fit_state`), written as a pipeline carrying this fold's segmenter, whose held-out fold
    it outlines and scores exactly as ``evaluate --auto-outline`` does.

    Returns:
        The fold's pipeline checkpoint, its summary row and its out-of-fold rows.
    """
    try:
        state = _fit_state(members, sources, combine, records, names, va, seg, cfg, dev)
    except ValueError as exc:
        raise ValueError(f"fold {fold}: {exc}") from exc
    seg_path = seg.run / f"fold{fold}" / "best.pt"
    pipeline = bundle_pipeline(state, seg.checkpoint(fold), names=("the ensemble", str(seg_path)))
    test_rows = [records[j] for j in te]
    pred, p_test, rep, rows = score_outlined(pipeline, test_rows, seg.outliner(fold), True, dev, n_boot,
                                             [names[j] for j in te])
    pipeline.metrics = {**state.metrics, "test": rep}
    weights, bias = np.asarray(state.member_weights), float(state.bias)
    log.info("fold %d: weights %s, bias %.3f, fitted on %d validation images (%d with no lesion found); held-out "
             "AUC %.4f, %d images with no lesion found", fold + 1, np.round(weights, 3).tolist(), bias,
             state.metrics["n_val_fitted"], state.metrics["n_val_no_lesion_found"], rep["auc"],
             rep["outline"]["n_no_lesion_found"])
    oof = [{"case_id": str(cid), "fold": fold, "label": int(y), "logit": float(z), "calibrated_logit": float(z),
            "probability": float(p), "lesion_found": bool(r["n_lesions"])}
           for cid, y, z, p, r in zip(pred["case_id"], pred["label"], pred["logit"], p_test, rows)]
    summary = {"fold": fold, "weights": weights.tolist(), "bias": bias, **{k: v for k, v in rep.items() if k != "outline"},
               "n_no_lesion_found": rep["outline"]["n_no_lesion_found"]}
    return pipeline, summary, oof


def _fit_state(members: Sequence[Checkpoint], sources: Sequence[str], combine: str, records: Sequence[dict],
               names: Sequence[str], va: Sequence[int], seg: SegmenterFolds, cfg: dict[str, Any], dev: Any) -> Checkpoint:
    """The ensemble state of ``members`` fitted on the validation rows ``va``, each outlined by the
    segmenter fold that held it out: the combination on the rows with a lesion found
    (:func:`fit_on_outlines`), the operating threshold on every row as the pipeline scores it (the
    whole-image members' score where no lesion is found, else 0), ``fitted_on`` set.

    Raises:
        ValueError: too few validation images have a lesion found.
    """
    rows, row_names = [records[j] for j in va], [names[j] for j in va]
    outliners = [seg.outliner(seg.fold_of[str(r[Keys.CASE_ID])]) for r in rows]
    weights, bias, c, found = fit_on_outlines(members, rows, outliners, combine, dev, row_names)
    y = np.array([members[0].classes.index(r[Keys.LABEL]) for r in rows])
    p = np.zeros(len(rows))
    p[found] = 1.0 / (1.0 + np.exp(-(c[found] @ weights + bias)))
    missed = np.flatnonzero(~found)
    whole = None
    if len(missed):
        whole = whole_image_log_odds(members, [rows[i] for i in missed], dev, [row_names[i] for i in missed])
    if whole is not None:
        p[missed] = 1.0 / (1.0 + np.exp(-whole))
    threshold = choose_threshold(y, p, method=cfg.get("eval", {}).get("threshold_method", "youden"))
    metrics = {"val_auc": roc_auc(y, p), "n_val_fitted": int(found.sum()), "n_val_no_lesion_found": len(missed)}
    state = ensemble_state(members, weights, bias, combine, threshold, metrics, sources)
    state.config["ensemble"]["fitted_on"] = fitted_on(seg.run)
    return state


def build_single_on_outlines(runs: Sequence[Path], out: Path, combine: str, dev: Any, n_boot: int | None,
                             segmenter_run: str | Path) -> dict[str, Any]:
    """Single-split classifier runs combined on automatic outlines (module docstring); writes
    ``out/best.pt`` (a pipeline) and ``out/summary.json``.

    Raises:
        ValueError: the runs do not share their validation part, the segmenter run never held out one
            of their validation or test images, or too few validation images have a lesion found.
    """
    from breastai.core.files import atomic_write_text

    members, paths, cfg, records, split, names = load_single_runs(runs)
    n_boot = int(n_boot if n_boot is not None else cfg.get("eval", {}).get("bootstrap", 2000))
    va, te = list(split["val"]), list(split.get("test", []))
    seg = SegmenterFolds(Path(segmenter_run), None, dev, [str(records[j][Keys.CASE_ID]) for j in va + te])
    state = _fit_state(members, [str(p) for p in paths], combine, records, names, va, seg, cfg, dev)
    metrics, threshold = state.metrics, state.threshold
    fold_paths = [seg.run / f"fold{f}" / "best.pt" for f in seg.folds]
    average = segmenter_ensemble([seg.checkpoint(f) for f in seg.folds], [str(p) for p in fold_paths])
    pipeline = bundle_pipeline(state, average, names=("the ensemble", f"{seg.run} (its {len(fold_paths)} folds averaged)"))
    rep = None
    if te:
        # Each test image by the fold that held it out (the average trained on all of them but one).
        y, p, z = [], [], []
        for f in seg.folds:
            part = [j for j in te if seg.fold_of[str(records[j][Keys.CASE_ID])] == f]
            if part:
                pred, probs, _, _ = score_outlined(pipeline, [records[j] for j in part], seg.outliner(f), True, dev,
                                                   0, [names[j] for j in part])
                y.append(pred["label"])
                p.append(probs)
                z.append(pred["logit"])
        rep = evaluation_report(np.concatenate(y), np.concatenate(p), threshold, n_boot=n_boot, scores=np.concatenate(z))
    pipeline.metrics = {**metrics, **({"test": rep} if rep is not None else {})}
    save_checkpoint(out / "best.pt", pipeline)
    summary = {"members": [str(r) for r in runs], "combine": combine, "weights": list(state.member_weights),
               "bias": state.bias, "threshold": threshold, **metrics, "fitted_on": state.config["ensemble"]["fitted_on"],
               "segmenter": [str(p) for p in fold_paths], **({"test": rep} if rep is not None else {})}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    log.info("weights %s, bias %.3f, fitted on %d validation images (%d with no lesion found)",
             np.round(state.member_weights, 3).tolist(), state.bias, metrics["n_val_fitted"],
             metrics["n_val_no_lesion_found"])
    return summary


class OutlineFit:
    """What :func:`~breastai.engine.ensemble.build_ensemble` is given to fit on automatic outlines from a
    segmenter's cross-validation run (``breastai ensemble --segmenter-run SEG_RUN``)."""

    def __init__(self, segmenter_run: str | Path):
        self.run = Path(segmenter_run)
        self._folds: SegmenterFolds | None = None

    @property
    def fitted_on(self) -> str:
        """How the ensemble's configuration names the fit."""
        return fitted_on(self.run)

    def fold(self, members: Sequence[Checkpoint], sources: Sequence[str], combine: str, records: Sequence[dict],
             names: Sequence[str], va: Sequence[int], te: Sequence[int], fold: int, case_folds: dict[str, int],
             cfg: dict[str, Any], dev: Any, n_boot: int) -> tuple[Checkpoint, dict[str, Any], list[dict]]:
        """One fold of CV classifier runs (:func:`fit_fold_on_outlines`); the segmenter run must hold out
        each case in the classifiers' fold (``case_folds``)."""
        if self._folds is None:
            self._folds = SegmenterFolds(self.run, case_folds, dev)
        return fit_fold_on_outlines(members, sources, combine, records, names, va, te, fold, self._folds, cfg, dev,
                                    n_boot)

    def single(self, runs: Sequence[Path], out: Path, combine: str, dev: Any, n_boot: int | None) -> dict[str, Any]:
        """Single-split classifier runs (:func:`build_single_on_outlines`)."""
        return build_single_on_outlines(runs, out, combine, dev, n_boot, self.run)

