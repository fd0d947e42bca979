"""Temperature scaling (Guo et al., 2017): one scalar T with p = sigmoid((logit - offset) / T); Platt scaling.

Fitted on the validation predictions of the best epoch by minimising the negative
log-likelihood; it changes probabilities, never the ranking (AUC is unchanged).

``offset`` undoes the prior shift of a class-weighted loss: BCE with ``pos_weight`` w is
minimised by logit + log(w), so probabilities are biased towards the positive class by a
constant that a temperature alone cannot remove. The offset log(w) is known exactly and is
stored in the checkpoint beside T.

At another site the model's log-odds may also be shifted by an unknown constant (benign lesions
scored too high): :func:`fit_platt` refits a slope and an intercept on a few labelled local cases
(``breastai calibrate``). A slope a and intercept b on the calibrated log-odds are again a
temperature and an offset, ``T' = T / a`` and ``offset' = offset - b T / a``, so a recalibrated
checkpoint is scored by the same two fields; :class:`Recalibration` records what was refitted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from breastai.core.config import CHOICES

__all__ = ["TARGETS", "T_MIN", "T_MAX", "Recalibration", "fit_temperature", "fit_platt", "apply_temperature", "calibrated_logit",
           "recalibrated_log_odds",
           "calibrated_probability"]


TARGETS = CHOICES["eval.calibration_targets"]  # ("hard", "platt")
# Bounds of T: a separable validation set drives it to 0 (infinitely sharp), which would be a lie.
T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200, targets: str = "hard") -> float:
    """The temperature minimising the binary cross-entropy of ``sigmoid(logits / T)`` against targets.

    Args:
        logits: validation log-odds (after any prior offset).
        labels: 0/1 labels.
        max_iter: L-BFGS iterations.
        targets: ``hard`` (default): the 0/1 labels (plain NLL). ``platt``: Platt's (1999)
            prior-corrected targets ``t+ = (N+ + 1) / (N+ + 2)`` for positives and
            ``t- = 1 / (N- + 2)`` for negatives, as in scikit-learn's sigmoid calibration. A
            validation part that the model separates perfectly (common once the lesion outline is
            read) drives the plain fit towards T -> 0, probabilities of exactly 0 and 1; Platt's
            targets keep T finite but, with ~25 positives, cap confident probabilities near 0.96
            (which of the two calibrates better held out: docs/results.md, "Calibration").

    Returns:
        T, clipped to [0.05, 20]; 1.0 when the data cannot support a fit (fewer than 2 samples or
        one class).
    """
    if targets not in TARGETS:
        raise ValueError(f"unknown calibration targets {targets!r}; choose from {', '.join(TARGETS)}")
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if logits.size < 2 or len(np.unique(labels)) < 2:
        return 1.0
    if targets == "hard" and logits[labels > 0.5].min() > 0 > logits[labels <= 0.5].max():
        # Every case already on its side of 0: the NLL falls all the way to T -> 0, so the answer is
        # the floor. L-BFGS stopped short of it at a T set by the logits' scale (exactly 1.0 once the
        # gradient underflowed). Ranked apart but not on both sides of 0, the optimum is finite.
        return T_MIN
    z = torch.tensor(logits)
    y = _targets(labels, targets)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    _minimise(lambda: torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y), [log_t], max_iter)
    t = float(log_t.detach().exp())
    return float(np.clip(t, T_MIN, T_MAX))


def fit_platt(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200, targets: str = "hard") -> tuple[float, float]:
    """Platt scaling of log-odds: the slope a and intercept b minimising the cross-entropy of
    ``sigmoid(a * logits + b)``.

    Unlike a temperature (a alone), the intercept moves a constant shift of the log-odds, the error a
    model taken to another site typically makes (every benign lesion scored too high). The slope is
    kept in [1 / T_MAX, 1 / T_MIN], the bounds of a temperature, so a separable sample gives the
    sharpest allowed slope instead of running to infinity.

    Args:
        logits: log-odds (e.g. a checkpoint's calibrated ones).
        labels: 0/1 labels.
        max_iter: L-BFGS iterations.
        targets: ``hard`` or ``platt``, as in :func:`fit_temperature`.

    Returns:
        ``(a, b)``; ``(1.0, 0.0)`` when the data cannot support a fit (fewer than 2 samples or one class).
    """
    if targets not in TARGETS:
        raise ValueError(f"unknown calibration targets {targets!r}; choose from {', '.join(TARGETS)}")
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if logits.size < 2 or len(np.unique(labels)) < 2:
        return 1.0, 0.0
    z = torch.tensor(logits)
    y = _targets(labels, targets)
    lo, hi = np.log(1.0 / T_MAX), np.log(1.0 / T_MIN)
    # log a = lo + (hi - lo) * sigmoid(u): bounded, so the optimum of a separable sample is finite;
    # u starts where a = 1 (the log-odds as they are).
    u = torch.tensor(float(np.log(-lo / hi)), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def slope() -> torch.Tensor:
        return torch.exp(lo + (hi - lo) * torch.sigmoid(u))

    _minimise(lambda: torch.nn.functional.binary_cross_entropy_with_logits(slope() * z + b, y), [u, b], max_iter)
    return float(slope().detach()), float(b.detach())


def _targets(labels: np.ndarray, targets: str) -> torch.Tensor:
    """The fit's targets: the 0/1 labels, or Platt's prior-corrected ones (see :func:`fit_temperature`)."""
    y = torch.tensor(labels, dtype=torch.float64)
    if targets == "platt":
        n_pos = float(labels.sum())
        n_neg = float(labels.size - n_pos)
        y = torch.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0)).to(torch.float64)
    return y


def _minimise(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], max_iter: int) -> None:
    """Minimise ``loss_fn()`` over ``params`` in place with L-BFGS (strong Wolfe line search)."""
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return 1.0 / (1.0 + np.exp(-z))


def calibrated_logit(logits: np.ndarray, state: dict) -> np.ndarray:
    """Calibrated log-odds ``(logit - logit_offset) / temperature`` with a checkpoint's values."""
    z = np.asarray(logits, dtype=np.float64) - float(state.get("logit_offset", 0.0))
    return z / float(state.get("temperature", 1.0))


def recalibrated_log_odds(z: np.ndarray, recalibrations: Sequence["Recalibration"]) -> np.ndarray:
    """``z`` through each local recalibration in turn (``slope * z + intercept``). An ensemble's own
    recalibrations live in its weights and bias; this carries them to a score made outside the
    combination (its whole-image members where no lesion is found), so one map covers both."""
    z = np.asarray(z, dtype=np.float64)
    for r in recalibrations:
        z = float(r.slope) * z + float(r.intercept)
    return z


def calibrated_probability(logits: np.ndarray, state: dict) -> np.ndarray:
    """Calibrated probabilities with a checkpoint's ``temperature`` and ``logit_offset``."""
    return apply_temperature(calibrated_logit(logits, state), 1.0)


@dataclass
class Recalibration:
    """One local recalibration of a checkpoint (``breastai calibrate``): what was refitted, on what.

    The model's weights are never touched: only the map from the model's log-odds to a probability
    (``temperature`` and ``logit_offset``, or an ensemble's member weights and bias) and the
    operating threshold. ``slope`` and ``intercept`` act on the source checkpoint's calibrated
    log-odds z: the new log-odds are ``slope * z + intercept`` (a temperature T: slope 1/T, intercept 0).

    Attributes:
        method: ``temperature`` or ``platt``.
        targets: the fit's targets (``hard`` or ``platt``, see :mod:`breastai.models.calibration`).
        slope: fitted slope on the source's calibrated log-odds.
        intercept: fitted intercept on them.
        before: the calibration fields before (``temperature``, ``logit_offset``; an ensemble's
            ``member_weights``, ``bias``).
        after: the same fields after.
        threshold_before: the source's operating threshold.
        threshold_after: the new one.
        threshold_method: how the new one was chosen (a ``choose_threshold`` method, or ``keep``: the
            source's operating point carried through the new calibration).
        n: local cases fitted on.
        n_per_class: local cases per class name.
        image_digests: sorted digests of the local image files (:func:`breastai.data.provenance.part_digests`).
        source_checkpoint: SHA-256 of the source checkpoint file's bytes.
        weights_digest: :func:`breastai.models.checkpoint.weights_digest` of the (unchanged) weights.
        created: when (ISO 8601, UTC).
        breastai_version: the breastai that fitted it.
        metrics: ECE and log-loss of the local sample before and after (in-sample, optimistic).
    """

    method: str
    targets: str
    slope: float
    intercept: float
    before: dict[str, Any]
    after: dict[str, Any]
    threshold_before: float
    threshold_after: float
    threshold_method: str
    n: int
    n_per_class: dict[str, int]
    image_digests: list[str] = field(repr=False)
    source_checkpoint: str
    weights_digest: str
    created: str
    breastai_version: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """The on-disk entry (plain containers)."""
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The short record for run summaries (``predictions.json``, ``metrics.json``): no image digests."""
        return {"method": self.method, "n": self.n, "n_per_class": dict(self.n_per_class),
                "threshold_method": self.threshold_method, "created": self.created,
                "source_checkpoint": self.source_checkpoint}

    @classmethod
    def from_state(cls, entry: Mapping[str, Any]) -> Recalibration:
        """Read an on-disk entry; keys this version does not know are ignored."""
        return cls(**{f.name: entry[f.name] for f in fields(cls) if f.name in entry})
