"""Out-of-distribution detection: how far an input's embedding lies from the training images'.

A classifier scores anything it is given: a mammogram fed to an ultrasound model, a colour
Doppler frame or a photograph still gets a probability. :class:`FeatureDensity` models the
embedding the model's head reads (``model.embed``) on the training part, as a Gaussian per class
with one shared covariance, and scores an input by its Mahalanobis distance to the nearest class
(Lee et al., NeurIPS 2018, on the penultimate layer):

    d(x) = min_c sqrt((e(x) - mu_c)^T S^-1 (e(x) - mu_c))

with ``mu_c`` the mean training embedding of class ``c`` and ``S`` the pooled within-class
covariance, shrunk towards a scaled identity by the Ledoit-Wolf estimate (there are more
embedding dimensions, 1280 for EfficientNet-Lite0, than training images). The threshold is a
quantile of the distances of the *validation* images (not used for the fit, so their distances
are what a new in-distribution image shows); the reported ``ood_score = d / threshold`` is
above 1 for a flagged input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["FeatureDensity", "fit_feature_density", "model_embedding"]


@dataclass
class FeatureDensity:
    """A fitted detector: class means, shared precision matrix and the flagging threshold.

    Attributes:
        means: (C, D) mean training embedding per class.
        precision: (D, D) inverse of the shrunk pooled covariance.
        threshold: distances above it are flagged.
        quantile: the quantile of the validation distances the threshold is.
        shrinkage: the Ledoit-Wolf shrinkage used (0: empirical covariance, 1: scaled identity).
        n_fit: training images the means and covariance come from.
        n_val: validation images the threshold comes from.
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    shrinkage: float
    n_fit: int
    n_val: int

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, D) to the nearest class mean."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.means.shape[1]:
            raise ValueError(f"expected embeddings of shape (N, {self.means.shape[1]}), got {f.shape}")
        p = self.precision.astype(np.float64)
        diffs = f[:, None, :] - self.means.astype(np.float64)[None]  # (N, C, D)
        d2 = np.einsum("ncd,de,nce->nc", diffs, p, diffs)
        return np.sqrt(np.maximum(d2, 0.0)).min(axis=1)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``distance / threshold``: above 1 means out of distribution."""
        return self.distance(features) / self.threshold

    def to_state(self) -> dict[str, Any]:
        """Plain tensors and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {"means": torch.from_numpy(np.ascontiguousarray(self.means, dtype=np.float32)),
                "precision": torch.from_numpy(np.ascontiguousarray(self.precision, dtype=np.float32)),
                "threshold": float(self.threshold), "quantile": float(self.quantile),
                "shrinkage": float(self.shrinkage), "n_fit": int(self.n_fit), "n_val": int(self.n_val)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FeatureDensity:
        """Inverse of :meth:`to_state`."""
        return cls(means=np.asarray(state["means"], dtype=np.float32),
                   precision=np.asarray(state["precision"], dtype=np.float32),
                   threshold=float(state["threshold"]), quantile=float(state["quantile"]),
                   shrinkage=float(state["shrinkage"]), n_fit=int(state["n_fit"]), n_val=int(state["n_val"]))


def fit_feature_density(train: np.ndarray, labels: np.ndarray, val: np.ndarray,
                        quantile: float = 0.99) -> FeatureDensity:
    """Fit the class-conditional Gaussians on ``train`` and the threshold on ``val``.

    Args:
        train: (N, D) embeddings of the training part.
        labels: (N,) class indices of ``train``.
        val: (M, D) embeddings of the validation part (never of the training part: a training
            image lies closer to the means it helped to fit than a new image of the same kind).
        quantile: the validation quantile that becomes the threshold, in (0, 1].

    Raises:
        ValueError: too few images, or a quantile outside (0, 1].
    """
    from sklearn.covariance import ledoit_wolf

    train, val = np.asarray(train, dtype=np.float64), np.asarray(val, dtype=np.float64)
    labels = np.asarray(labels)
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"the OOD quantile must be in (0, 1], got {quantile}")
    if len(train) < 4 or len(val) < 2:
        raise ValueError(f"an OOD detector needs >= 4 training and >= 2 validation images, got {len(train)} and {len(val)}")
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    cov, shrinkage = ledoit_wolf(centred, assume_centered=True)
    precision = np.linalg.pinv(cov, hermitian=True)
    fitted = FeatureDensity(means=means.astype(np.float32), precision=precision.astype(np.float32), threshold=1.0,
                            quantile=float(quantile), shrinkage=float(shrinkage), n_fit=len(train), n_val=len(val))
    fitted.threshold = float(np.quantile(fitted.distance(val), quantile))
    if not np.isfinite(fitted.threshold) or fitted.threshold <= 0:
        raise ValueError(f"OOD threshold {fitted.threshold} from {len(val)} validation images is not positive")
    return fitted


def model_embedding(model: nn.Module, x: torch.Tensor, radiomics: torch.Tensor | None = None) -> torch.Tensor:
    """The embedding the model's head reads: ``model.embed(x)`` (``radiomics=`` for models taking it)."""
    return model.embed(x) if radiomics is None else model.embed(x, radiomics=radiomics)
