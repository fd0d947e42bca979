"""Local recalibration (``breastai calibrate``): refit a checkpoint's calibration and threshold on a
small labelled sample of the user's own site, never its weights.

A model taken to another hospital often ranks as well as at home but its probabilities are off:
at BrEaST the BUSI model scored benign lesions far too high. The local rows are scored once with
the checkpoint's own preset (:func:`local_log_odds`, the checkpoint's calibrated log-odds z; a
pipeline's as it scores a new exam, :func:`local_pipeline_log_odds`: automatic outlines), a
slope and an intercept on z are fitted (:func:`fit_local`; ``temperature``: slope only), the
threshold is chosen on the refitted probabilities, and :func:`recalibrated_checkpoint` builds the
new checkpoint: same weights (same :func:`~breastai.models.checkpoint.weights_digest`), new
``temperature`` and ``logit_offset`` (for an ensemble: member weights and bias), new threshold,
and a :class:`~breastai.models.calibration.Recalibration` entry saying what was refitted, on how
many cases and which images. ``predict`` and ``evaluate`` read those fields, so they use the new
calibration without knowing about this module. ``benchmarks/local_calibration.py`` uses the same
:func:`fit_local` on repeated draws.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from breastai.core.distributed import resolve_device
from breastai.core.files import file_sha256
from breastai.data.frames import read_samples
from breastai.data.provenance import part_digests, seen_before
from breastai.engine.scoring import NonFiniteScoreError, check_finite, predict_records, row_names
from breastai.models.calibration import Recalibration, apply_temperature, calibrated_logit, fit_platt, fit_temperature
from breastai.models.checkpoint import Checkpoint, package_versions, weights_digest
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.reporting.metrics import choose_threshold, ece, nll

__all__ = ["METHODS", "DEFAULT_METHOD", "MIN_PER_CLASS", "KEEP", "LocalFit", "TooFewCasesError", "local_log_odds",
           "local_pipeline_log_odds", "fit_local", "recalibrated_checkpoint", "recalibrate_checkpoint", "check_new_checkpoint",
           "warn_seen_before"]

log = logging.getLogger("breastai")

METHODS = ("temperature", "platt")
# Chosen by the rule in docs/experiments.md ("Local recalibration at a second site").
DEFAULT_METHOD = "platt"
# Fewer cases of a class than this and a fitted intercept or Youden threshold is noise.
MIN_PER_CLASS = 5
# Threshold method: keep the source's operating point (same log-odds cut) through the new calibration.
KEEP = "keep"


class TooFewCasesError(ValueError):
    """The local sample has too few cases of a class to fit on; the message says how many are needed."""


@dataclass(frozen=True)
class LocalFit:
    """A recalibration fitted on local cases: new log-odds ``slope * z + intercept`` of the source's
    calibrated log-odds z, and the operating threshold on the new probability.

    Attributes:
        method: ``temperature`` (intercept 0) or ``platt``.
        targets: the fit's targets (``hard`` or ``platt``).
        slope: the slope on z.
        intercept: the intercept on z.
        threshold: the new operating threshold (a probability).
        threshold_method: how it was chosen (a ``choose_threshold`` method or ``keep``).
    """

    method: str
    targets: str
    slope: float
    intercept: float
    threshold: float
    threshold_method: str

    def log_odds(self, z: np.ndarray) -> np.ndarray:
        """The recalibrated log-odds of the source's calibrated log-odds ``z``."""
        return self.slope * np.asarray(z, dtype=np.float64) + self.intercept

    def probability(self, z: np.ndarray) -> np.ndarray:
        """The recalibrated probability of the source's calibrated log-odds ``z``."""
        return apply_temperature(self.log_odds(z), 1.0)


def local_log_odds(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: Any,
                   names: Sequence[str] | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """The checkpoint's calibrated log-odds of ``records`` (``logit``), with ``label`` and ``case_id``.

    Scored once with the checkpoint's own preset (:func:`breastai.engine.scoring.predict_records`);
    for an ensemble, its combined log-odds.

    Raises:
        RecordError: a record cannot be read (named by ``names``).
        NonFiniteScoreError: a score is NaN or infinite.
    """
    pred = predict_records(ckpt, records, device, progress=progress, names=names)
    return {**pred, "logit": calibrated_logit(pred["logit"], ckpt.calibration)}


def local_pipeline_log_odds(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: Any, names: Sequence[str]
                            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A pipeline's calibrated log-odds of local rows as it scores a new exam
    (:func:`breastai.engine.auto_outline.pipeline_log_odds`: each image outlined by its own segmenter,
    the rows' traced masks unused, the most malignant lesion found deciding, an image with none scored
    by the whole-image members, whose score the recalibration then maps too). Only the scored images
    are returned (``found`` marks them): one with no lesion found and no whole-image member gets 0,
    which no calibration moves.

    Raises:
        RecordError: a row's image cannot be read or outlined (named by ``names``).
    """
    from breastai.engine.auto_outline import pipeline_log_odds
    from breastai.models.outliner import Outliner

    z = pipeline_log_odds(ckpt, records, Outliner(ckpt.segmenter, device), True, device, names).log_odds
    found = z != -np.inf  # -inf: nothing scored the image; NaN or +inf: a corrupt calibration, refused
    check_finite(z[found], [r["case_id"] for r, f in zip(records, found) if f], "calibrated logit",
                 f"the checkpoint's calibration (temperature {ckpt.temperature}) is unusable")
    labels = np.array([ckpt.classes.index(r["label"]) for r in records])
    return {"label": labels[found], "case_id": [r["case_id"] for r, f in zip(records, found) if f], "logit": z[found]}, found


def _check_counts(labels: np.ndarray, classes: Sequence[str], source: str) -> dict[str, int]:
    counts = {str(c): int(np.sum(labels == k)) for k, c in enumerate(classes)}
    short = [c for c, n in counts.items() if n < MIN_PER_CLASS]
    if short:
        have = " and ".join(f"{n} {c}" for c, n in counts.items())
        raise TooFewCasesError(f"{source}: {have} case(s); calibrate needs at least {MIN_PER_CLASS} of each class "
                               f"(too few {', '.join(short)}); 50 local cases or more are advised (docs/results.md)")
    return counts


def fit_local(z: np.ndarray, labels: np.ndarray, method: str = DEFAULT_METHOD, targets: str = "hard",
              threshold_method: str = "youden", threshold_before: float = 0.5, classes: Sequence[str] = ("0", "1"),
              source: str = "local sample") -> LocalFit:
    """Fit a recalibration on local cases.

    Args:
        z: the source checkpoint's calibrated log-odds of the local cases.
        labels: their 0/1 labels.
        method: ``temperature`` (a scale) or ``platt`` (scale and intercept).
        targets: the fit's targets, ``hard`` or ``platt`` (see :func:`breastai.models.calibration.fit_temperature`).
        threshold_method: a :func:`breastai.reporting.metrics.choose_threshold` method applied to the
            refitted probabilities, or ``keep``: the source's threshold moved through the new
            calibration (the same cut of the log-odds, so the same sensitivity and specificity).
        threshold_before: the source's threshold (for ``keep``).
        classes: class names, for the refusal message.
        source: what the cases are, for the refusal message.

    Raises:
        TooFewCasesError: fewer than :data:`MIN_PER_CLASS` cases of a class.
        ValueError: an unknown method, targets or threshold method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown recalibration method {method!r}; choose from {', '.join(METHODS)}")
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    _check_counts(y, classes, source)
    if method == "temperature":
        slope, intercept = 1.0 / fit_temperature(z, y, targets=targets), 0.0
    else:
        slope, intercept = fit_platt(z, y, targets=targets)
    fit = LocalFit(method, targets, slope, intercept, 0.5, threshold_method)
    if threshold_method == KEEP:
        t0 = float(np.clip(threshold_before, 1e-12, 1 - 1e-12))
        threshold = float(fit.probability(np.log(t0 / (1 - t0))))
    else:
        threshold = choose_threshold(y, fit.probability(z), threshold_method)
    return dataclasses.replace(fit, threshold=threshold)


def _calibration_fields(ckpt: Checkpoint) -> dict[str, Any]:
    if ckpt.is_ensemble:
        return {"member_weights": [float(w) for w in ckpt.member_weights], "bias": float(ckpt.bias)}
    return dict(ckpt.calibration)


def recalibrated_checkpoint(ckpt: Checkpoint, fit: LocalFit, z: np.ndarray, labels: np.ndarray,
                            records: Sequence[dict[str, Any]], source_checkpoint: str | Path) -> Checkpoint:
    """A copy of ``ckpt`` with the fitted calibration and threshold and a recorded :class:`Recalibration`.

    The weights are the same objects. A model's log-odds ``(logit - offset) / T`` mapped by slope a
    and intercept b are ``(logit - offset') / T'`` with ``T' = T / a`` and ``offset' = offset - b T / a``;
    an ensemble's ``sum w_i c_i + bias`` become ``sum (a w_i) c_i + (a bias + b)``.

    Args:
        ckpt: the source checkpoint.
        fit: the fit (:func:`fit_local`).
        z: the local cases' calibrated log-odds under ``ckpt`` (for the recorded local metrics).
        labels: their labels.
        records: the local records (their image files are digested).
        source_checkpoint: the source checkpoint's file (its SHA-256 is recorded).
    """
    a, b = fit.slope, fit.intercept
    if ckpt.is_ensemble:
        changed: dict[str, Any] = {"member_weights": [a * float(w) for w in ckpt.member_weights],
                                   "bias": a * float(ckpt.bias) + b}
    else:
        t, off = ckpt.calibration["temperature"], ckpt.calibration["logit_offset"]
        changed = {"temperature": t / a, "logit_offset": off - b * t / a}
    y = np.asarray(labels).astype(np.int64)
    p0, p1 = apply_temperature(z, 1.0), fit.probability(z)
    rec = Recalibration(
        method=fit.method, targets=fit.targets, slope=float(a), intercept=float(b),
        before=_calibration_fields(ckpt), after=dict(changed), threshold_before=float(ckpt.threshold),
        threshold_after=float(fit.threshold), threshold_method=fit.threshold_method, n=int(y.size),
        n_per_class={str(c): int(np.sum(y == k)) for k, c in enumerate(ckpt.classes)},
        image_digests=part_digests(records), source_checkpoint=file_sha256(source_checkpoint),
        weights_digest=weights_digest(ckpt), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        breastai_version=package_versions()["breastai"],
        metrics={"ece_before": ece(y, p0), "ece_after": ece(y, p1), "nll_before": nll(y, p0), "nll_after": nll(y, p1)})
    return dataclasses.replace(ckpt, **changed, threshold=float(fit.threshold),
                               recalibration=[*(ckpt.recalibration or []), rec])


def check_new_checkpoint(out: str | Path, checkpoint: str | Path) -> Path:
    """``out`` as the file a local step (``calibrate``, ``adapt``) writes its new checkpoint to.

    Raises:
        ValueError: ``out`` is a folder, or the source checkpoint itself (which the new one's
            record points to by its digest, so it must stay).
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; --out names the new checkpoint file (e.g. {out / 'local.pt'})")
    if out.exists() and out.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {out} is the source checkpoint: write the new one to another file, "
                         "so the source its record points to stays")
    return out


def warn_seen_before(ckpt: Checkpoint, records: Sequence[dict[str, Any]]) -> None:
    """Warn when local images are byte-identical to images the checkpoint was trained or validated on."""
    seen = seen_before(ckpt.seen_images, records)
    if seen["train"] or seen["val"]:
        log.warning("warning: %d of the %d local images are identical to images this checkpoint was trained on and "
                    "%d to its validation images: a local sample should come from the new site", seen["train"],
                    len(records), seen["val"])


def recalibrate_checkpoint(checkpoint: str | Path, data: str | Path, out: str | Path, method: str = DEFAULT_METHOD,
                           threshold_method: str | None = None, targets: str | None = None,
                           device: str = "auto") -> Recalibration:
    """``breastai calibrate``: refit ``checkpoint``'s calibration and threshold on the labelled datalist
    ``data`` and write the result to ``out`` atomically (the source is left as it is).

    Args:
        checkpoint: the source checkpoint (a model's or an ensemble's).
        data: labelled datalist of local cases (at least :data:`MIN_PER_CLASS` of each class).
        out: the new checkpoint file.
        method: ``temperature`` or ``platt``.
        threshold_method: default: the checkpoint's ``eval.threshold_method`` (as in training); or
            ``keep`` (see :func:`fit_local`).
        targets: default: the checkpoint's ``eval.calibration_targets``.
        device: auto, cpu or cuda.

    Returns:
        The recorded :class:`Recalibration`.

    Raises:
        CheckpointError: the checkpoint is missing, corrupted or unusable.
        DatalistError, RecordError: the datalist or one of its images is unusable (named).
        TooFewCasesError: too few local cases of a class.
        ValueError: ``out`` is the source checkpoint or a folder; an unknown method.
    """
    out = check_new_checkpoint(out, checkpoint)
    if method not in METHODS:  # before any image is scored
        raise ValueError(f"unknown recalibration method {method!r}; choose from {', '.join(METHODS)}")
    if threshold_method not in (None, KEEP):  # an unknown method is refused before any image is scored
        choose_threshold(np.array([0, 1]), np.array([0.0, 1.0]), threshold_method)
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.config  # an ensemble's holds its first member's data and eval sections
    threshold_method = threshold_method or str(cfg.get("eval", {}).get("threshold_method", "youden"))
    targets = targets or str(cfg.get("eval", {}).get("calibration_targets", "hard"))
    records = read_samples(data, cfg["data"], ckpt.classes)
    labels = np.array([ckpt.classes.index(r["label"]) for r in records])
    _check_counts(labels, ckpt.classes, f"datalist {data}")  # before scoring a single image
    warn_seen_before(ckpt, records)
    names = row_names(data, records, cfg["data"].get("reader_options"))
    try:
        if ckpt.is_pipeline:
            pred, found = local_pipeline_log_odds(ckpt, records, resolve_device(device), names)
            records = [r for r, f in zip(records, found) if f]
            _check_counts(pred["label"], ckpt.classes, f"datalist {data} (images the pipeline scored)")
        else:
            pred = local_log_odds(ckpt, records, resolve_device(device), progress=True, names=names)
    except NonFiniteScoreError as exc:
        raise NonFiniteScoreError(f"{checkpoint}: {exc}") from exc
    fit = fit_local(pred["logit"], pred["label"], method, targets, threshold_method, ckpt.threshold, ckpt.classes,
                    f"datalist {data}")
    new = recalibrated_checkpoint(ckpt, fit, pred["logit"], pred["label"], records, checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, new)
    return new.recalibration[-1]
