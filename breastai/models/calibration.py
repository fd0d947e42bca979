"""Temperature scaling (Guo et al., 2017): one scalar T with p = sigmoid((logit - offset) / T).

Fitted on the validation predictions of the best epoch by minimising the negative
log-likelihood; it changes probabilities, never the ranking (AUC is unchanged).

``offset`` undoes the prior shift of a class-weighted loss: BCE with ``pos_weight`` w is
minimised by logit + log(w), so probabilities are biased towards the positive class by a
constant that a temperature alone cannot remove. The offset log(w) is known exactly and is
stored in the checkpoint beside T.
"""

from __future__ import annotations

import numpy as np
import torch

from breastai.core.config import CHOICES

__all__ = ["TARGETS", "T_MIN", "T_MAX", "fit_temperature", "apply_temperature", "calibrated_logit", "calibrated_probability"]


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
    y = torch.tensor(labels)
    if targets == "platt":
        n_pos = float(labels.sum())
        n_neg = float(labels.size - n_pos)
        y = torch.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0)).to(torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, T_MIN, T_MAX))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return 1.0 / (1.0 + np.exp(-z))


def calibrated_logit(logits: np.ndarray, state: dict) -> np.ndarray:
    """Calibrated log-odds ``(logit - logit_offset) / temperature`` with a checkpoint's values."""
    z = np.asarray(logits, dtype=np.float64) - float(state.get("logit_offset", 0.0))
    return z / float(state.get("temperature", 1.0))


def calibrated_probability(logits: np.ndarray, state: dict) -> np.ndarray:
    """Calibrated probabilities with a checkpoint's ``temperature`` and ``logit_offset``."""
    return apply_temperature(calibrated_logit(logits, state), 1.0)
