"""Scoring a checkpoint on datalist rows: raw logits by its own eval preset, then calibrated metrics and rows.

A score is never made from NaN or infinity: a model with corrupt weights (or a corrupt input) gives
non-finite logits, and a NaN passed on would read as "benign" at any threshold or as a metric.
:func:`check_finite` refuses them, naming the cases, wherever logits are scored here. A row whose
image cannot be read stops the scoring with an error that names the row
(:class:`RecordError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from breastai.core.keys import Keys
from breastai.data.readers.registry import ImageReadError
from breastai.data.transforms import root_cause
from breastai.engine.loaders import build_dataset, make_loader
from breastai.engine.loops import predict_loader
from breastai.models.calibration import apply_temperature, calibrated_logit
from breastai.models.checkpoint import Checkpoint, CheckpointError, inference_model
from breastai.reporting.metrics import ece, evaluation_report

__all__ = ["NonFiniteScoreError", "RecordError", "check_finite", "row_names", "default_names", "score_part", "predict_records",
           "members_log_odds", "combined_log_odds", "ensemble_predict_records"]

_SHOWN = 5  # case ids named in an error; the count says how many more


class NonFiniteScoreError(ValueError):
    """A score is NaN or infinite; the message names the first cases and the likely cause."""


class RecordError(ValueError):
    """A record could not be prepared for scoring; the message names the record (its datalist row) and why."""

    def __init__(self, message: str) -> None:
        # An error raised in a DataLoader worker comes back to the main process as this type built
        # from "Caught RecordError in DataLoader worker process N.\nOriginal Traceback ...
        # <module>.RecordError: <message>": keep the message, so a command still says it in one line.
        tag = f"{type(self).__name__}: "
        if message.startswith("Caught ") and tag in message:
            message = message.rsplit(tag, 1)[1].rstrip()
        super().__init__(message)


def check_finite(values: np.ndarray, case_ids: Sequence[Any], what: str = "logit",
                 cause: str = "the checkpoint's weights or the input images are corrupt") -> None:
    """Refuse NaN and infinite scores.

    Args:
        values: one score per case.
        case_ids: the cases, in the same order.
        what: what the values are, for the message.
        cause: what non-finite values of this kind mean, for the message.

    Raises:
        NonFiniteScoreError: naming how many cases and the first few case ids.
    """
    bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
    if bad.any():
        ids = [str(c) for c, b in zip(case_ids, bad) if b]
        shown = ", ".join(ids[:_SHOWN]) + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")
        raise NonFiniteScoreError(f"{len(ids)} of {bad.size} cases got a non-finite {what} (NaN or infinity; "
                                  f"case_id {shown}): {cause}; nothing was scored")


def row_names(datalist: str | Path, records: Sequence[dict[str, Any]],
              reader_options: dict[str, Any] | None = None) -> list[str]:
    """``datalist D, row N (case_id C)`` for each sample of :func:`breastai.data.frames.read_samples`.

    Rows are numbered as :func:`breastai.data.datalist.read_datalist` numbers them in its own
    messages (CSV: the line, the header being row 1; JSON: the entry, from 0). The samples keep the
    datalist's order; with the frame policy ``all`` the frames of one multi-frame row follow each
    other from frame 0.
    """
    expanded = ((reader_options or {}).get("dicom") or {}).get("frame") == "all"
    row = (0 if Path(datalist).suffix.lower() == ".json" else 2) - 1
    names = []
    for r in records:
        frame = r.get(Keys.FRAME)
        if not (expanded and isinstance(frame, int) and frame > 0):
            row += 1
        names.append(f"datalist {datalist}, row {row} ({Keys.CASE_ID} {r[Keys.CASE_ID]})")
    return names


class _Named(torch.utils.data.Dataset):
    """A dataset whose failures name the record: ``<its name>: <the transform's own error>``."""

    def __init__(self, ds: torch.utils.data.Dataset, names: Sequence[str]) -> None:
        self.ds, self.names = ds, list(names)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.ds[i]
        except Exception as exc:  # any failure to prepare a row: say which row
            cause = root_cause(exc)
            msg = str(cause) if isinstance(cause, ImageReadError) else f"{type(cause).__name__}: {cause}"
            raise RecordError(f"{self.names[i]}: {msg}") from exc


def score_part(pred: dict[str, np.ndarray], ckpt: Checkpoint, n_boot: int) -> tuple[np.ndarray, dict[str, Any], list[dict]]:
    """Calibrated probabilities, metrics (with ``ece_uncalibrated``) and per-case rows of one scored part.

    ``pred`` is :func:`breastai.engine.predict_loader` output; ``ckpt`` the checkpoint whose
    calibration and operating threshold are applied.

    Raises:
        NonFiniteScoreError: a logit, or a calibrated one, is NaN or infinite.
    """
    check_finite(pred["logit"], pred["case_id"])
    z_cal = calibrated_logit(pred["logit"], ckpt.calibration)
    check_finite(z_cal, pred["case_id"], "calibrated logit",
                 f"the checkpoint's calibration (temperature {ckpt.temperature}, offset {ckpt.logit_offset}) is unusable")
    probs = apply_temperature(z_cal, 1.0)
    rep = evaluation_report(pred["label"], probs, ckpt.threshold, n_boot=n_boot, scores=z_cal)
    rep["ece_uncalibrated"] = ece(pred["label"], apply_temperature(pred["logit"], 1.0))
    rows = [{"case_id": str(c), "label": int(y), "logit": float(z), "calibrated_logit": float(zc), "probability": float(p)}
            for c, y, z, zc, p in zip(pred["case_id"], pred["label"], pred["logit"], z_cal, probs)]
    if ckpt.ood is not None and pred.get("features"):
        ood = ckpt.ood.score(pred["features"])
        rep["ood_flagged"] = float(np.mean(ood > 1.0))  # the fraction of the part the detector calls unlike training
        for row, o in zip(rows, ood):
            row["ood_score"] = float(o)
    return probs, rep, rows


def default_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """How an error names each record when the caller gives no datalist rows: ``case_id C``."""
    return [f"{Keys.CASE_ID} {r[Keys.CASE_ID]}" for r in records]


def predict_records(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                    progress: bool = False, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Raw logits of a checkpoint's model on ``records``, preprocessed by the checkpoint's own
    (evaluation) preset, exactly as validation and test parts are scored in training. For an
    ensemble checkpoint, the combined log-odds of its members (:mod:`breastai.engine.ensemble`).

    Args:
        ckpt: the checkpoint.
        records: datalist records (samples).
        device: where the model runs.
        progress: show a progress bar.
        names: how an error names each record (default ``case_id C``; see :func:`row_names`).

    Raises:
        RecordError: a record's image or mask cannot be read or prepared (named by ``names``).
        NonFiniteScoreError: a logit is NaN or infinite.
    """
    names = default_names(records) if names is None else names
    if ckpt.is_ensemble:
        return ensemble_predict_records(ckpt, records, device, progress, names)
    cfg = {**ckpt.config, "data": {**ckpt.config["data"], "cache": "none"}}
    model = inference_model(ckpt, device, keep=ckpt.ood.layers if ckpt.ood is not None else ())  # the detector's
    ds = _Named(build_dataset(cfg, records, False), names)
    pred = predict_loader(model, make_loader(ds, cfg, False, None, 0), device, channels_last=True,
                          progress=progress, flip=bool(cfg["eval"]["flip_average"]), features=None if ckpt.ood is None else ckpt.ood.layers)
    check_finite(pred["logit"], pred["case_id"])
    return pred


def combined_log_odds(ckpt: Checkpoint, log_odds: np.ndarray) -> np.ndarray:
    """An ensemble's log-odds ``sum_i w_i * c_i + b`` from its members' calibrated log-odds (n, m)."""
    return log_odds @ np.asarray(ckpt.member_weights, dtype=np.float64) + float(ckpt.bias)


def members_log_odds(members: Sequence[Checkpoint], records: Sequence[dict[str, Any]], device: torch.device,
                     progress: bool = False, names: Sequence[str] | None = None,
                     sources: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(n, m) calibrated log-odds of every member on ``records``, plus the first member's labels/ids.

    ``names`` name the records in errors (see :func:`predict_records`), ``sources`` the members
    (default ``member i (model name)``).

    Raises:
        RecordError: a record cannot be read or prepared.
        NonFiniteScoreError: a member's logit or calibrated log-odds is NaN or infinite (the
            message names the member).
    """
    cols, first = [], None
    for i, member in enumerate(members):
        label = sources[i] if sources is not None else f"member {i + 1} ({member.model.name})"
        try:
            pred = predict_records(member, records, device, progress=progress, names=names)
            col = calibrated_logit(pred["logit"], member.calibration)
            check_finite(col, pred["case_id"], "calibrated logit",
                         f"its calibration (temperature {member.temperature}, offset {member.logit_offset}) is unusable")
        except NonFiniteScoreError as exc:
            raise NonFiniteScoreError(f"{label}: {exc}") from exc
        if first is None:
            first = pred
        elif list(pred["case_id"]) != list(first["case_id"]):
            raise CheckpointError("ensemble members scored the cases in different orders")
        cols.append(col)
    return np.stack(cols, 1), first


def ensemble_predict_records(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                             progress: bool = False, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Like :func:`predict_records` for an ensemble checkpoint: ``logit`` is
    the combined (already calibrated) log-odds."""
    c, pred = members_log_odds(ckpt.members, records, device, progress, names)
    z = combined_log_odds(ckpt, c)
    check_finite(z, pred["case_id"], "combined log-odds",
                 f"the ensemble's weights {ckpt.member_weights} or bias {ckpt.bias} are unusable")
    return {**pred, "logit": z}
