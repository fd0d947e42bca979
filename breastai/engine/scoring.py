"""Scoring a checkpoint on datalist rows: raw logits by its own eval preset, then calibrated metrics and rows."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from breastai.engine.loaders import build_dataset, make_loader
from breastai.engine.loops import predict_loader
from breastai.models.calibration import apply_temperature, calibrated_logit
from breastai.models.checkpoint import Checkpoint, CheckpointError, model_from_checkpoint
from breastai.reporting.metrics import ece, evaluation_report

__all__ = ["score_part", "predict_records", "members_log_odds", "combined_log_odds", "ensemble_predict_records"]


def score_part(pred: dict[str, np.ndarray], ckpt: Checkpoint, n_boot: int) -> tuple[np.ndarray, dict[str, Any], list[dict]]:
    """Calibrated probabilities, metrics (with ``ece_uncalibrated``) and per-case rows of one scored part.

    ``pred`` is :func:`breastai.engine.predict_loader` output; ``ckpt`` the checkpoint whose
    calibration and operating threshold are applied.
    """
    z_cal = calibrated_logit(pred["logit"], ckpt.calibration)
    probs = apply_temperature(z_cal, 1.0)
    rep = evaluation_report(pred["label"], probs, ckpt.threshold, n_boot=n_boot, scores=z_cal)
    rep["ece_uncalibrated"] = ece(pred["label"], apply_temperature(pred["logit"], 1.0))
    rows = [{"case_id": str(c), "label": int(y), "logit": float(z), "calibrated_logit": float(zc), "probability": float(p)}
            for c, y, z, zc, p in zip(pred["case_id"], pred["label"], pred["logit"], z_cal, probs)]
    return probs, rep, rows


def predict_records(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                    progress: bool = False) -> dict[str, np.ndarray]:
    """Raw logits of a checkpoint's model on ``records``, preprocessed by the checkpoint's own
    (evaluation) preset, exactly as validation and test parts are scored in training. For an
    ensemble checkpoint, the combined log-odds of its members (:mod:`breastai.engine.ensemble`)."""
    if ckpt.is_ensemble:
        return ensemble_predict_records(ckpt, records, device, progress)
    cfg = {**ckpt.config, "data": {**ckpt.config["data"], "cache": "none"}}
    model = model_from_checkpoint(ckpt).to(device)
    return predict_loader(model, make_loader(build_dataset(cfg, records, False), cfg, False, None, 0), device,
                          progress=progress, flip=bool(cfg["eval"]["flip_average"]))


def combined_log_odds(ckpt: Checkpoint, log_odds: np.ndarray) -> np.ndarray:
    """An ensemble's log-odds ``sum_i w_i * c_i + b`` from its members' calibrated log-odds (n, m)."""
    return log_odds @ np.asarray(ckpt.member_weights, dtype=np.float64) + float(ckpt.bias)


def members_log_odds(members: Sequence[Checkpoint], records: Sequence[dict[str, Any]], device: torch.device,
                     progress: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(n, m) calibrated log-odds of every member on ``records``, plus the first member's labels/ids."""
    cols, first = [], None
    for member in members:
        pred = predict_records(member, records, device, progress=progress)
        if first is None:
            first = pred
        elif list(pred["case_id"]) != list(first["case_id"]):
            raise CheckpointError("ensemble members scored the cases in different orders")
        cols.append(calibrated_logit(pred["logit"], member.calibration))
    return np.stack(cols, 1), first


def ensemble_predict_records(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                             progress: bool = False) -> dict[str, np.ndarray]:
    """Like :func:`predict_records` for an ensemble checkpoint: ``logit`` is
    the combined (already calibrated) log-odds."""
    c, pred = members_log_odds(ckpt.members, records, device, progress)
    return {**pred, "logit": combined_log_odds(ckpt, c)}
