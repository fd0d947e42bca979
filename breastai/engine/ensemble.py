"""Ensembles of trained runs: one checkpoint that adds up the calibrated log-odds of its members.

Models that look at different evidence make different mistakes: a lesion-crop CNN sees the
lesion's outline and texture, a whole-image CNN the tissue around it and the posterior
shadowing, a radiomics model hand-made shape descriptors. Their calibrated log-odds
``c_i = (z_i - offset_i) / T_i`` are on one scale, so the ensemble is a logistic regression on them::

    logit = sum_i w_i * c_i + b,      probability = sigmoid(logit)

``combine="mean"`` ties the weights (``w_i = s / n``: one scale ``s`` and the bias ``b``),
``combine="stack"`` fits one non-negative weight per member (L2-penalised). Either way the
weights are fitted on the VALIDATION part that each member already used for model selection,
never on the held-out part, and the fit is the ensemble's calibration (its temperature is 1).

For cross-validation runs trained on the same folds (same datalist, seed and fold count),
``build_ensemble`` writes one ensemble checkpoint per fold and the same ``cv_summary.json`` /
``oof_predictions.csv`` as ``breastai train --folds K``, so ablations and DeLong tests treat the
ensemble like any other run::

    breastai ensemble runs/busi_crop_cv runs/busi_whole_cv --out runs/busi_crop+whole_cv

An ensemble checkpoint holds every member checkpoint whole, so ``breastai predict`` and
``breastai evaluate`` need nothing else; the saliency map is the weight-averaged map of the
members that have one (all in the original image geometry).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from breastai.data.frames import read_samples
from breastai.data.provenance import part_digests
from breastai.engine.scoring import members_log_odds, row_names
from breastai.models.checkpoint import Checkpoint, CheckpointError, ModelArgs
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.reporting.metrics import choose_threshold, evaluation_report, roc_auc

__all__ = ["COMBINE", "fit_combiner", "ensemble_state", "load_single_runs", "build_single_ensemble", "build_ensemble"]

log = logging.getLogger("breastai")

COMBINE = ("mean", "stack")


def fit_combiner(log_odds: np.ndarray, labels: np.ndarray, combine: str = "mean", l2: float = 1.0
                 ) -> tuple[np.ndarray, float]:
    """Weights and bias of ``sum_i w_i * c_i + b`` by penalised maximum likelihood.

    Minimises ``sum_n BCE(y_n, w . c_n + b) + l2 * |w|^2 / 2`` (the bias is not penalised) with
    ``w >= 0``: a member is never turned against its own evidence.

    Args:
        log_odds: (n, m) calibrated log-odds of the m members on n validation cases.
        labels: (n,) 0/1.
        combine: ``mean`` (one scale shared by all weights) or ``stack`` (one weight each).
        l2: ridge penalty; with the log-odds already calibrated it only tames separable data.

    Returns:
        ``(weights (m,), bias)``.

    Raises:
        ValueError: unknown ``combine``, shapes that do not match, or one class only.
    """
    from scipy.optimize import minimize

    c = np.asarray(log_odds, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if combine not in COMBINE:
        raise ValueError(f"unknown combine {combine!r}; choose {' or '.join(COMBINE)}")
    if c.ndim != 2 or c.shape[0] != y.shape[0]:
        raise ValueError(f"log-odds of shape {c.shape} do not fit {y.shape[0]} labels")
    if len(np.unique(y)) < 2:
        raise ValueError("the validation part holds one class only: the ensemble weights cannot be fitted")
    m = c.shape[1]
    x = c.mean(1, keepdims=True) if combine == "mean" else c

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = x @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        nll = float(np.sum(np.logaddexp(0.0, z) - y * z))
        g = p - y
        return nll + 0.5 * l2 * float(w @ w), np.concatenate([x.T @ g + l2 * w, [g.sum()]])

    k = x.shape[1]
    start = np.concatenate([np.full(k, 1.0 if combine == "mean" else 1.0 / m), [0.0]])
    res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * k + [(None, None)])
    w, b = res.x[:-1], float(res.x[-1])
    weights = np.full(m, w[0] / m) if combine == "mean" else w
    return weights, b


def ensemble_state(members: Sequence[Checkpoint], weights: np.ndarray, bias: float, combine: str,
                   threshold: float, metrics: dict[str, Any], sources: Sequence[str]) -> Checkpoint:
    """The checkpoint of an ensemble (members kept whole, so it is self-contained).

    Raises:
        CheckpointError: the members name other classes.
    """
    classes = list(members[0].classes)
    for m, src in zip(members[1:], sources[1:]):
        if list(m.classes) != classes:
            raise CheckpointError(f"{src}: classes {m.classes} differ from {sources[0]}'s {classes}")
    first = members[0].config
    cfg = {"data": first["data"], "seed": first.get("seed", 0), "eval": first.get("eval", {}),
           "preprocess": {"mode": "+".join(str(m.config["preprocess"]["mode"]) for m in members)},
           "model": {"name": "ensemble", "members": [m.model.name for m in members]},
           "ensemble": {"combine": combine, "sources": [str(x) for x in sources]}}
    return Checkpoint(
        model=ModelArgs("ensemble"),
        weights={},
        config=cfg,
        classes=classes,
        threshold=float(threshold),
        # The fit of the weights is the ensemble's calibration.
        temperature=1.0,
        logit_offset=0.0,
        metrics=metrics,
        # What any member learned from or was selected on (the ensemble's weights were fitted on the latter).
        seen_images={part: sorted({d for m in members for d in (m.seen_images or {}).get(part, [])})
                     for part in ("train", "val")},
        members=list(members),
        member_weights=[float(w) for w in weights],
        bias=float(bias),
        combine=combine,
    )


def _check_same_folds(runs: Sequence[Path], summaries: Sequence[dict[str, Any]]) -> None:
    """Members must have been trained and validated on the same parts, case by case."""
    from breastai.core.config import split_seed

    keys = [("data", "datalist"), ("data", "val_fraction"), ("train", "folds")]

    def get(cfg: dict, key: tuple) -> Any:
        for k in key:
            cfg = cfg.get(k) if isinstance(cfg, dict) else None
        return cfg

    ref = summaries[0]["config"]
    ref_folds = {str(p["case_id"]): int(p["fold"]) for p in summaries[0]["oof_predictions"]}
    for run, s in zip(runs[1:], summaries[1:]):
        # The folds follow data.split_seed (or the seed when it is unset): runs trained with other
        # seeds on the same folds are what a seed ensemble is made of.
        if split_seed(s["config"]) != split_seed(ref):
            raise ValueError(f"{run}: its folds come from split seed {split_seed(s['config'])}, {runs[0]}'s from "
                             f"{split_seed(ref)}; ensemble members must share their folds")
        for key in keys:
            if get(s["config"], key) != get(ref, key):
                raise ValueError(f"{run}: {'.'.join(key)} = {get(s['config'], key)!r} differs from {runs[0]}'s "
                                 f"{get(ref, key)!r}; ensemble members must share their folds")
        folds = {str(p["case_id"]): int(p["fold"]) for p in s["oof_predictions"]}
        if folds != ref_folds:
            moved = sorted(c for c in set(folds) | set(ref_folds) if folds.get(c) != ref_folds.get(c))
            raise ValueError(f"{run}: held-out folds differ from {runs[0]}'s (e.g. case {moved[0]!r}); "
                             "ensemble members must share their folds")


def _combine_part(members: Sequence[Checkpoint], sources: Sequence[str], combine: str, records: Sequence[dict[str, Any]],
                  names: Sequence[str], va: Sequence[int], te: Sequence[int], cfg: dict[str, Any], dev: Any,
                  n_boot: int) -> tuple[Checkpoint, dict[str, Any] | None, dict[str, np.ndarray] | None]:
    """Fit the combination (and the threshold) on the validation rows ``va``, then only score the
    held-out rows ``te`` (none: no test figures).

    Returns:
        ``(ensemble checkpoint, held-out report, held-out rows)``; the rows hold ``case_id``,
        ``label``, the combined ``logit`` and ``probability``; both None without held-out rows.
    """
    c_val, val = members_log_odds(members, [records[j] for j in va], dev, names=[names[j] for j in va],
                                  sources=sources)
    weights, bias = fit_combiner(c_val, val["label"], combine)
    z_val = c_val @ weights + bias
    threshold = choose_threshold(val["label"], 1.0 / (1.0 + np.exp(-z_val)),
                                 method=cfg.get("eval", {}).get("threshold_method", "youden"))
    metrics: dict[str, Any] = {"val_auc": roc_auc(val["label"], z_val)}
    rep = test = None
    if len(te):
        c_test, scored = members_log_odds(members, [records[j] for j in te], dev, names=[names[j] for j in te],
                                          sources=sources)
        z_test = c_test @ weights + bias
        test = {"case_id": scored["case_id"], "label": scored["label"], "logit": z_test,
                "probability": 1.0 / (1.0 + np.exp(-z_test))}
        rep = evaluation_report(test["label"], test["probability"], threshold, n_boot=n_boot, scores=z_test)
        metrics.update(test=rep, member_test_auc=[roc_auc(test["label"], c_test[:, j]) for j in range(len(members))])
    return ensemble_state(members, weights, bias, combine, threshold, metrics, sources), rep, test


def _is_single_run(run: Path) -> bool:
    """A single-split training run (``best.pt`` and ``summary.json``, no ``cv_summary.json``)."""
    return (run / "best.pt").is_file() and (run / "summary.json").is_file() and not (run / "cv_summary.json").exists()


def load_single_runs(runs: Sequence[Path]) -> tuple[list[Checkpoint], list[Path], dict[str, Any], list[dict[str, Any]],
                                                    dict[str, np.ndarray], list[str]]:
    """Single-split runs to combine: ``(members, their best.pt, the first's config, the datalist's rows,
    the split, row names)``, once it is checked that every member selected its epoch on the same
    validation part.

    Raises:
        ValueError: a run was validated on other images than the shared part, or is an ensemble.
    """
    from breastai.engine.run import run_splits

    paths = [r / "best.pt" for r in runs]
    members = [load_checkpoint(p) for p in paths]
    for p, m in zip(paths, members):
        if m.is_ensemble:
            raise ValueError(f"{p} is itself an ensemble: give its member runs instead")
    cfg = members[0].config
    records = read_samples(cfg["data"]["datalist"], cfg["data"], list(cfg["data"]["classes"]))
    split = run_splits(cfg, records)[0]
    # Every member keeps the digests of the images it selected its epoch on: they must be the rows
    # this fit is made on, or "validation" rows would be rows a member trained on (another split
    # seed, another datalist, or the same relative path read from another folder).
    val_digests = part_digests([records[j] for j in split["val"]])
    for run, m in zip(runs, members):
        if sorted((m.seen_images or {}).get("val", [])) != val_digests:
            raise ValueError(f"{run}: its validation part differs from the one {cfg['data']['datalist']} (read from "
                             f"{Path.cwd()}) gives {runs[0]}'s config; train the members with one data.split_seed "
                             "(e.g. seed=1 data.split_seed=0 beside seed=0) and combine them from the folder they "
                             "were trained in")
    names = row_names(cfg["data"]["datalist"], records, cfg["data"].get("reader_options"))
    return members, paths, cfg, records, split, names


def build_single_ensemble(runs: Sequence[Path], out: Path, combine: str, dev: Any, n_boot: int | None
                          ) -> dict[str, Any]:
    """Combine single-split runs that share their validation part (a seed ensemble: ``seed=1
    data.split_seed=0`` beside ``seed=0``): the combination and the threshold fitted on that part,
    the ``split=test`` rows, if any, only scored. Writes ``out/best.pt`` and ``out/summary.json``.

    Raises:
        ValueError: a run was validated on other images than the shared part, or is an ensemble.
    """
    from breastai.core.files import atomic_write_text

    members, paths, cfg, records, split, names = load_single_runs(runs)
    n_boot = int(n_boot if n_boot is not None else cfg.get("eval", {}).get("bootstrap", 2000))
    state, rep, _ = _combine_part(members, [str(p) for p in paths], combine, records, names, split["val"],
                                  split.get("test", []), cfg, dev, n_boot)
    save_checkpoint(out / "best.pt", state)
    summary = {"members": [str(r) for r in runs], "combine": combine, "weights": list(state.member_weights),
               "bias": state.bias, "threshold": state.threshold, "val_auc": state.metrics["val_auc"],
               **({"test": rep, "member_test_auc": state.metrics["member_test_auc"]} if rep is not None else {})}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def build_ensemble(runs: Sequence[str | Path], out: str | Path, combine: str = "mean", device: str = "cpu",
                   n_boot: int | None = None, on_outlines: Any = None) -> dict[str, Any]:
    """Combine cross-validation runs fold by fold; write checkpoints and a CV summary into ``out``.
    Single-split runs that share their validation part are combined once
    (:func:`build_single_ensemble`).

    For each fold, the members' ``fold{i}/best.pt`` score the fold's validation part (carved
    exactly as in training), :func:`fit_combiner` fits the weights and the operating threshold
    is chosen there too; the held-out fold is then only scored.

    Args:
        runs: CV run folders (``cv_summary.json``, ``fold{i}/best.pt``) trained on the same folds, or
            single-split run folders (``best.pt``, ``summary.json``).
        out: output folder: ``fold{i}/best.pt``, ``cv_summary.json``, ``oof_predictions.csv``.
        combine: ``mean`` or ``stack`` (see :func:`fit_combiner`).
        device: ``cpu``, ``cuda`` or ``auto``.
        n_boot: bootstrap resamples for the AUC intervals (default: the first member's setting).
        on_outlines: fit the combination on automatic outlines instead of traced ones: an
            :class:`~breastai.engine.ensemble_outlines.OutlineFit` (``breastai ensemble --segmenter-run``),
            which fits each fold (CV runs; each fold's checkpoint a pipeline carrying its segmenter)
            or the single-split runs.

    Returns:
        The CV summary (or the single-split ensemble's summary).
    """
    from breastai.core.distributed import resolve_device
    from breastai.engine.cv import cv_splits, cv_summary, label_sites, load_cv_summary

    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise ValueError("an ensemble needs at least two runs")
    if combine not in COMBINE:
        raise ValueError(f"unknown combine {combine!r}; choose {' or '.join(COMBINE)}")
    out = Path(out)
    if (out / "cv_summary.json").exists() or (out / "best.pt").exists():
        raise ValueError(f"{out} already holds an ensemble; choose another --out or remove it")
    single = [_is_single_run(r) for r in runs]
    if any(single):
        if not all(single):
            raise ValueError(f"{runs[single.index(False)]} is not a single-split run folder (best.pt, summary.json) "
                             f"like {runs[single.index(True)]}: combine runs of one kind")
        if on_outlines is not None:
            return on_outlines.single(runs, out, combine, resolve_device(device), n_boot)
        return build_single_ensemble(runs, out, combine, resolve_device(device), n_boot)
    summaries = [load_cv_summary(r) for r in runs]
    _check_same_folds(runs, summaries)
    cfg = summaries[0]["config"]
    classes = list(cfg["data"]["classes"])
    records = read_samples(cfg["data"]["datalist"], cfg["data"], classes)
    k = cfg["train"]["folds"]  # the members' fold scheme: K, or "sites" (as engine.cv.run_folds reads it)
    splits = cv_splits(records, k, cfg)
    # The datalist is read again (its path as the members saw it, relative to where they were
    # trained): the folds it gives must be the members' own, or "held-out" cases were trained on.
    ref_folds = {str(p["case_id"]): int(p["fold"]) for p in summaries[0]["oof_predictions"]}
    now = {str(records[j]["case_id"]): i for i, (_, _, te) in enumerate(splits) for j in te}
    if now != ref_folds:
        moved = sorted(c for c in set(now) | set(ref_folds) if now.get(c) != ref_folds.get(c))
        raise ValueError(f"{cfg['data']['datalist']} (read from {Path.cwd()}) gives other held-out folds than the "
                         f"members' (e.g. case {moved[0]!r}, {len(moved)} cases in all): run this from the folder "
                         "the members were trained in, with their datalist unchanged")
    dev = resolve_device(device)
    n_boot = int(n_boot if n_boot is not None else cfg.get("eval", {}).get("bootstrap", 2000))
    names = row_names(cfg["data"]["datalist"], records, cfg["data"].get("reader_options"))
    per_fold, oof = [], []
    for i, (_, va, te) in enumerate(splits):
        paths = [r / f"fold{i}" / "best.pt" for r in runs]
        members = [load_checkpoint(p) for p in paths]
        for p, m in zip(paths, members):
            if m.is_ensemble:
                raise ValueError(f"{p} is itself an ensemble: give its member runs instead")
        sources = [str(p) for p in paths]
        if on_outlines is not None:
            state, fold, rows = on_outlines.fold(members, sources, combine, records, names, va, te, i, now, cfg, dev,
                                                 n_boot)
            save_checkpoint(out / f"fold{i}" / "best.pt", state)
            per_fold.append(fold)
            oof += rows
            continue
        state, rep, test = _combine_part(members, sources, combine, records, names, va, te, cfg, dev, n_boot)
        log.info("fold %d/%d: weights %s, bias %.3f; held-out AUC %.4f (members %s)", i + 1, len(splits),
                 np.round(state.member_weights, 3).tolist(), state.bias, rep["auc"],
                 np.round(state.metrics["member_test_auc"], 4).tolist())
        save_checkpoint(out / f"fold{i}" / "best.pt", state)
        per_fold.append({"fold": i, "weights": list(state.member_weights), "bias": state.bias, **rep})
        oof += [{"case_id": str(cid), "fold": i, "label": int(y), "logit": float(z), "calibrated_logit": float(z),
                 "probability": float(p)}
                for cid, y, z, p in zip(test["case_id"], test["label"], test["logit"], test["probability"])]
    per_fold, oof = label_sites(per_fold, oof, records, splits, k)
    cfg = {**cfg, "model": {"name": "ensemble", "members": [str(r) for r in runs]},
           "ensemble": {"combine": combine, "members": [str(r) for r in runs]}}
    if on_outlines is not None:
        cfg["ensemble"]["fitted_on"] = on_outlines.fitted_on
    return cv_summary(per_fold, oof, cfg, out)
