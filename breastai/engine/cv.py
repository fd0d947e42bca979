"""Cross-validation: group-aware folds, one :func:`~breastai.engine.trainer.fit` per fold, the pooled summary."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from breastai.core import distributed as dist
from breastai.core.config import split_seed
from breastai.core.files import atomic_write_csv, atomic_write_text
from breastai.core.keys import Keys
from breastai.data.frames import read_samples
from breastai.data.grouping import grouping_of
from breastai.data.provenance import join_identical_images
from breastai.data.splits import carve_validation, fixed_folds, group_kfold, record_sites, site_folds, site_strata
from breastai.engine.level_scores import pooled_level_summary
from breastai.engine.scoring import predict_records, score_part
from breastai.engine.seg_trainer import fit_segmenter
from breastai.engine.trainer import fit
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.registry import model_task
from breastai.reporting.levels import ImageScore
from breastai.reporting.metrics import bootstrap_auc_ci, ece, roc_auc, summarise_folds
from breastai.reporting.segmentation import segmentation_summary

__all__ = ["cv_splits", "cross_validate", "load_cv_summary", "run_folds", "label_sites", "cv_summary", "seg_cv_summary"]

log = logging.getLogger("breastai")


def _finished_fold(cfg: dict[str, Any], records: Sequence[dict[str, Any]], test_idx: np.ndarray, fold_dir: Path) -> dict[str, Any]:
    """Results of a fold finished before a ``--resume``: from its ``done`` file, or, for a file
    without predictions, recomputed from the fold's ``best.pt`` on its held-out part."""
    done = json.loads((fold_dir / "done").read_text())
    ids = [str(records[i]["case_id"]) for i in test_idx]
    if "test_case_ids" in done and done["test_case_ids"] != ids:  # (older done files keep no ids)
        raise ValueError(f"--resume: {fold_dir} was finished on other held-out cases than this split gives "
                         "(datalist, folds or seeds changed); start a new run instead")
    if "test_predictions" in done:
        return done
    ckpt = load_checkpoint(fold_dir / "best.pt")
    pred = predict_records(ckpt, [records[i] for i in test_idx], torch.device("cpu"))
    _, rep, preds = score_part(pred, ckpt, int(cfg["eval"]["bootstrap"]))
    rep["seconds"] = done.get("seconds", float("nan"))
    return {"best_epoch": ckpt.best_epoch, "test": rep, "test_predictions": preds}


def cv_splits(records: Sequence[dict[str, Any]], k: int | str, cfg: dict[str, Any]
              ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, val, test) index arrays of each fold, exactly as :func:`cross_validate` uses them.

    ``k`` = ``"sites"``: leave-one-site-out, one fold per site in name order
    (:func:`breastai.data.splits.site_folds`). An integer ``k``: stratified group K-fold, by site
    and label when the datalist holds several sites. Every fold's validation part is carved from
    its training rows, stratified by site and label on mixed-site data, so it holds every
    training site. The folds depend on ``data.val_fraction`` and
    :func:`breastai.config.split_seed` only (and on the image files: rows with byte-identical
    files are one group).

    Raises:
        DatalistError: identical images with different labels, in two folds the datalist fixes,
            or (leave-one-site-out) in two sites.
        ValueError: the data cannot be split so (see :func:`~breastai.data.splits.site_folds`).
    """
    source = cfg["data"].get("datalist")
    seed, out = split_seed(cfg), []
    if k == "sites":
        held_out = [idx for _, idx in site_folds(records, source)]  # refused before any file is hashed
        # The site is the fixed part: a copy of an image at another site would be trained and tested on.
        records = join_identical_images(records, record_sites(records), Keys.SITE, source)
    else:
        records = join_identical_images(records, fixed_folds(records), Keys.FOLD, source)
        held_out = group_kfold(records, int(k), seed=seed, strata=site_strata(records))
    strata = site_strata(records)
    for i, test_idx in enumerate(held_out):
        train_all = np.setdiff1d(np.arange(len(records)), test_idx)
        tr, va = carve_validation(records, train_all, cfg["data"]["val_fraction"], seed=seed + i, strata=strata)
        out.append((tr, va, test_idx))
    return out


def label_sites(per_fold: list[dict[str, Any]], oof: list[dict[str, Any]], records: Sequence[dict[str, Any]],
                splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int | str
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``per_fold`` and ``oof`` with their sites, for the summary's per-site figures: every out-of-fold
    row gets its case's ``site`` (on data that names sites) and, leave-one-site-out, every fold its
    held-out ``site``. Rows and folds are returned as new dicts; data without sites is returned as is.
    """
    sites = record_sites(records)
    if sites is None:
        return per_fold, oof
    site_of = {str(r[Keys.CASE_ID]): s for r, s in zip(records, sites)}
    oof = [{**p, "site": site_of[str(p["case_id"])]} for p in oof]
    if k == "sites":
        per_fold = [{**f, "site": sites[splits[f["fold"]][2][0]]} for f in per_fold]
    return per_fold, oof


def cross_validate(cfg: dict[str, Any], records: Sequence[dict[str, Any]], k: int | str, run_dir: Path, resume: bool = False,
                   splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None) -> dict[str, Any]:
    """Stratified group-aware K-fold CV; writes ``cv_summary.json`` and ``oof_predictions.csv``.

    Each fold's training part gives up a group-aware validation part for model selection;
    the held-out fold is only evaluated. ``splits``: the folds :func:`cv_splits` gave, when the
    caller made them already (they are made, and the image files hashed, once per run).
    """
    per_fold, oof = [], []
    segmenter = model_task(cfg) == "segmentation"
    train_fold = fit_segmenter if segmenter else fit
    splits = cv_splits(records, k, cfg) if splits is None else splits
    # exam, laterality and view go with each out-of-fold row, so that the summary (and a later
    # `evaluate --fit-on oof_predictions.csv`) can combine them per breast and exam
    # (the image by a hash of its path: a DICOM export's path may name the patient)
    grouping = {str(r[Keys.CASE_ID]): {**grouping_of(r), "image": hashlib.sha256(str(r[Keys.IMAGE]).encode()).hexdigest()[:16]}
                for r in records}
    if not any(g[Keys.EXAM] or g[Keys.LATERALITY] for g in grouping.values()):
        grouping = {}
    for i, (tr, va, test_idx) in enumerate(splits):
        if dist.is_main():
            log.info("fold %d/%d: %d train, %d val, %d test", i + 1, len(splits), len(tr), len(va), len(test_idx))
        fold_dir = run_dir / f"fold{i}"
        if resume and (fold_dir / "done").is_file():
            res = _finished_fold(cfg, records, test_idx, fold_dir)
            log.info("fold %d already finished", i + 1)
        else:
            t0 = time.time()
            res = train_fold(cfg, records, {"train": tr, "val": va, "test": test_idx}, fold_dir,
                             resume=resume and (fold_dir / "last.pt").is_file())
            res["test"]["seconds"] = time.time() - t0
            if dist.is_main():
                done = {"best_epoch": res["best_epoch"], "test": res["test"], "test_predictions": res["test_predictions"],
                        "test_case_ids": [str(records[j]["case_id"]) for j in test_idx]}
                atomic_write_text(fold_dir / "done", json.dumps(done, default=float))
        per_fold.append({"fold": i, "best_epoch": res["best_epoch"], **res["test"]})
        oof += [{**p, "fold": i, **({} if segmenter else grouping.get(str(p["case_id"]), {}))}
                for p in res["test_predictions"]]
    per_fold, oof = label_sites(per_fold, oof, records, splits, k)
    out_dir = run_dir if dist.is_main() else None
    return seg_cv_summary(per_fold, oof, cfg, out_dir) if segmenter else cv_summary(per_fold, oof, cfg, out_dir)


def seg_cv_summary(per_fold: list[dict[str, Any]], oof: list[dict[str, Any]], cfg: dict[str, Any],
                   run_dir: Path | None) -> dict[str, Any]:
    """A segmenter's cross-validation: per-fold figures, mean ± sd, the pooled held-out summary
    (:func:`~breastai.reporting.segmentation.segmentation_summary`, per site too on mixed-site data);
    written to ``run_dir/cv_summary.json`` and ``oof_predictions.csv`` unless ``run_dir`` is None."""
    nb = int(cfg["eval"]["bootstrap"])
    summary: dict[str, Any] = {
        "task": "segmentation", "folds": per_fold,
        "mean_sd": summarise_folds([{k: v for k, v in f.items() if isinstance(v, (int, float))} for f in per_fold]),
        "pooled": segmentation_summary(oof, nb), "oof_predictions": oof, "config": cfg,
    }
    has_sites = bool(oof) and all("site" in p for p in oof)
    if has_sites:
        summary["per_site"] = {s: segmentation_summary([p for p in oof if p["site"] == s], nb)
                               for s in sorted({p["site"] for p in oof})}
    if run_dir is not None:
        atomic_write_text(Path(run_dir) / "cv_summary.json", json.dumps(summary, indent=1, default=float))
        atomic_write_csv(Path(run_dir) / "oof_predictions.csv",
                         ["case_id", "fold", *(["site"] if has_sites else []), "has_lesion", "presence_logit",
                          "presence_probability", "lesion_found", "n_lesions", "dice", "iou", "hd95"], oof, exact=True)
    return summary


def load_cv_summary(run: str | Path) -> dict[str, Any]:
    """The ``cv_summary.json`` of a cross-validation run folder (or the file itself).

    Raises:
        FileNotFoundError: no summary there.
        ValueError: the file is not a cross-validation summary.
    """
    p = Path(run)
    p = p / "cv_summary.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{run}: no cv_summary.json (train with --folds K first)")
    s = json.loads(p.read_text())
    for key in ("folds", "mean_sd", "oof_predictions"):
        if key not in s:
            raise ValueError(f"{p}: not a cross-validation summary (no {key!r})")
    return s


def run_folds(run: str | Path, folds: int | str | None = None):
    """The folds of a finished cross-validation run, rebuilt from its own config and datalist, for
    scripts that score them again: yields ``(i, fold_dir, records, (train, val, test), cfg)``.

    Args:
        run: the run folder.
        folds: the fold scheme the caller needs (``"sites"``, or K); None: whichever the run used.

    Raises:
        ValueError: the run used another scheme than ``folds``.
    """
    run = Path(run)
    cfg = load_cv_summary(run)["config"]
    used = cfg["train"]["folds"]
    if folds is not None and str(used) != str(folds):
        raise ValueError(f"{run}: folds {used!r}, not {folds!r} (train.folds of the run)")
    records = read_samples(cfg["data"]["datalist"], cfg["data"])
    for i, parts in enumerate(cv_splits(records, used, cfg)):
        yield i, run / f"fold{i}", records, parts, cfg


def cv_summary(per_fold: list[dict[str, Any]], oof: list[dict[str, Any]], cfg: dict[str, Any],
               run_dir: Path | None) -> dict[str, Any]:
    """Per-fold metrics, mean ± sd, pooled out-of-fold AUC and predictions; written to
    ``run_dir/cv_summary.json`` and ``oof_predictions.csv`` unless ``run_dir`` is None."""
    y = np.array([p["label"] for p in oof])
    # Calibrated log-odds share one scale across folds and, unlike float probabilities, never tie at 0 or 1.
    # (A fold finished before the column existed, then resumed, has only probabilities.)
    key = "calibrated_logit" if all("calibrated_logit" in p for p in oof) else "probability"
    pooled = np.array([p[key] for p in oof])
    summary = {
        "folds": per_fold,
        "mean_sd": summarise_folds([{k: v for k, v in f.items() if isinstance(v, (int, float))} for f in per_fold]),
        "pooled_oof_auc": roc_auc(y, pooled),
        "oof_predictions": oof,
        "config": cfg,
    }
    has_sites = bool(oof) and all("site" in p for p in oof)
    if has_sites:
        summary["per_site"] = _per_site(oof, key, int(cfg["eval"]["bootstrap"]))
    grouped = bool(oof) and key == "calibrated_logit" and all(Keys.EXAM in p for p in oof)
    if grouped:
        scores = [ImageScore(case_id=str(p["case_id"]), log_odds=float(p[key]), label=int(p["label"]),
                             exam=p[Keys.EXAM], laterality=p[Keys.LATERALITY], view=p[Keys.VIEW], image=p["image"])
                  for p in oof]
        summary["levels"] = pooled_level_summary(scores, int(cfg["eval"]["bootstrap"]))
    if run_dir is not None:
        atomic_write_text(Path(run_dir) / "cv_summary.json", json.dumps(summary, indent=1, default=float))
        has_ood = bool(oof) and all("ood_score" in p for p in oof)
        atomic_write_csv(Path(run_dir) / "oof_predictions.csv", ["case_id", "fold", *(["site"] if has_sites else []),
                                                                 "label", "logit", "calibrated_logit", "probability",
                                                                 *(["ood_score"] if has_ood else []),
                                                                 *([Keys.EXAM, Keys.LATERALITY, Keys.VIEW, "image"]
                                                                   if grouped else [])],
                         oof, exact=True)
    return summary


def _per_site(oof: list[dict[str, Any]], key: str, n_boot: int) -> dict[str, dict[str, Any]]:
    """n, AUC with its bootstrap CI and ECE of the pooled out-of-fold predictions of each site's rows,
    and the fraction the out-of-distribution detector flags (``ood_flagged``) where there is one.

    A site with one class in its rows (possible in K-fold CV, refused by leave-one-site-out) gets
    None for the AUC and its interval rather than failing the whole summary.
    """
    out: dict[str, dict[str, Any]] = {}
    for site in sorted({p["site"] for p in oof}):
        rows = [p for p in oof if p["site"] == site]
        y = np.array([p["label"] for p in rows])
        s = np.array([p[key] for p in rows])
        entry: dict[str, Any] = {"n": len(rows), "n_malignant": int(y.sum()), "auc": None, "auc_ci_low": None,
                                 "auc_ci_high": None, "ece": ece(y, np.array([p["probability"] for p in rows]))}
        if all("ood_score" in p for p in rows):
            entry["ood_flagged"] = float(np.mean([p["ood_score"] > 1.0 for p in rows]))
        if len(set(y.tolist())) == 2:
            lo, hi = bootstrap_auc_ci(y, s, n_boot=max(n_boot, 1))
            entry.update(auc=roc_auc(y, s), auc_ci_low=lo, auc_ci_high=hi)
        out[site] = entry
    return out
