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

__all__ = ["fit_temperature", "apply_temperature", "calibrated_logit", "calibrated_probability"]


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The temperature minimising binary NLL of ``sigmoid(logits / T)`` on ``labels``.

    Returns 1.0 when the data cannot support a fit (fewer than 2 samples or one class).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if logits.size < 2 or len(np.unique(labels)) < 2:
        return 1.0
    z = torch.tensor(logits)
    y = torch.tensor(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    # Bound T: a separable validation set drives it to 0 (infinitely sharp), which would be a lie.
    return float(np.clip(t, 0.05, 20.0))


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
