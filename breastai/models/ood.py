"""Out-of-distribution detection: how far an input's features lie from the training images'.

A classifier scores anything it is given: a mammogram fed to an ultrasound model, a colour
Doppler frame or a photograph still gets a probability. :class:`FeatureDensity` models, on the
training part, the features of an input at a few depths of the network: the channel means of
intermediate feature maps (the spec's ``ood_layers``: mid-level texture such as speckle versus
film grain) and the embedding the head reads (``model.embed``). Each group ``l`` is modelled as a
Gaussian per class with one shared covariance, and scored by the Mahalanobis distance to the
nearest class (Lee et al., NeurIPS 2018, "feature ensemble" over layers)::

    d_l(x) = min_c sqrt((f_l(x) - mu_lc)^T S_l^-1 (f_l(x) - mu_lc))

with ``mu_lc`` the mean training feature of class ``c`` and ``S_l`` the pooled within-class
covariance, shrunk towards a scaled identity by the Ledoit-Wolf estimate (there are more feature
dimensions, 1280 for EfficientNet-Lite0's embedding, than training images). The groups are put
on one scale by their own validation quantile ``t_l`` and the input's score is the largest::

    s(x) = max_l d_l(x) / t_l,    ood_score(x) = s(x) / (T * margin)

where ``T`` is the ``quantile`` of ``s`` over the *validation* images (not used for the fit, so
their distances are what a new image of the training kind shows). ``ood_score > 1`` flags an
input. With ``margin`` 1 about ``1 - quantile`` of new images *from the training site* would be
flagged; but another hospital's scanner moves the intermediate maps too (at BrEaST most lesions
scored above the BUSI validation quantile), so the flag sits ``margin`` times further out, between
another site's ultrasound and mammograms (how the default was set: docs/experiments.md). An
input with ``ood_score * margin > 1`` is "shifted": unlike the training site, not necessarily of
the wrong kind. The embedding alone (the head's input) separated the BUSI model's lesion crops
poorly from mammogram crops: the two-class head keeps little of what makes an image ultrasound,
the intermediate maps keep it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["Gaussians", "FeatureDensity", "fit_feature_density", "model_embedding", "model_features", "FeatureTap"]


@dataclass
class Gaussians:
    """Class means and the shared precision matrix of one feature group.

    Attributes:
        means: (C, D) mean training feature per class.
        precision: (D, D) inverse of the shrunk pooled covariance.
        shrinkage: the Ledoit-Wolf shrinkage used (0: empirical covariance, 1: scaled identity).
    """

    means: np.ndarray
    precision: np.ndarray
    shrinkage: float

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, D) to the nearest class mean."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.means.shape[1]:
            raise ValueError(f"expected features of shape (N, {self.means.shape[1]}), got {f.shape}")
        diffs = f[:, None, :] - self.means.astype(np.float64)[None]  # (N, C, D)
        # one matrix product, then a row-wise dot: numpy's three-operand einsum took 4 ms per member and
        # image for a 1280-wide embedding, and numpy's own BLAS threads fight torch's for the cores
        d = torch.from_numpy(diffs)
        d2 = ((d @ self._precision64) * d).sum(-1).numpy()
        return np.sqrt(np.maximum(d2, 0.0)).min(axis=1)

    @cached_property
    def _precision64(self) -> torch.Tensor:
        return torch.from_numpy(self.precision.astype(np.float64))

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> Gaussians:
        """Per-class means and the Ledoit-Wolf shrunk pooled within-class covariance."""
        from sklearn.covariance import ledoit_wolf

        f = np.asarray(features, dtype=np.float64)
        classes, idx = np.unique(np.asarray(labels), return_inverse=True)
        means = np.stack([f[idx == k].mean(0) for k in range(len(classes))])
        cov, shrinkage = ledoit_wolf(f - means[idx], assume_centered=True)
        return cls(means.astype(np.float32), np.linalg.pinv(cov, hermitian=True).astype(np.float32), float(shrinkage))


@dataclass
class FeatureDensity:
    """A fitted detector: one :class:`Gaussians` per feature group, their scales and the threshold.

    Attributes:
        layers: the intermediate modules (names relative to the model) whose channel means are
            the first groups; the embedding is the last group.
        groups: one :class:`Gaussians` per layer, then the embedding's.
        scales: ``t_l``, each group's validation quantile.
        threshold: ``T``, the validation quantile of the largest scaled distance.
        quantile: the quantile both are.
        margin: how many times ``T`` an input's scaled distance must be to be flagged.
        n_fit: training images the Gaussians come from.
        n_val: validation images the scales and threshold come from.
    """

    layers: list[str]
    groups: list[Gaussians]
    scales: list[float]
    threshold: float
    quantile: float
    n_fit: int
    n_val: int
    margin: float = 1.0

    def score(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """``ood_score`` of each input from its feature groups (as :func:`model_features` gives
        them): above 1 means out of distribution."""
        return self._scaled(features) / (self.threshold * self.margin)

    def _scaled(self, features: Sequence[np.ndarray]) -> np.ndarray:
        if len(features) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} feature groups, got {len(features)}")
        return np.max([g.distance(f) / t for g, f, t in zip(self.groups, features, self.scales)], axis=0)

    def to_state(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {"layers": list(self.layers),
                "means": [torch.from_numpy(np.ascontiguousarray(g.means, dtype=np.float32)) for g in self.groups],
                "precision": [torch.from_numpy(np.ascontiguousarray(g.precision, dtype=np.float32)) for g in self.groups],
                "shrinkage": [float(g.shrinkage) for g in self.groups], "scales": [float(t) for t in self.scales],
                "threshold": float(self.threshold), "quantile": float(self.quantile), "margin": float(self.margin),
                "n_fit": int(self.n_fit), "n_val": int(self.n_val)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FeatureDensity:
        """Inverse of :meth:`to_state` (also reads the first, embedding-only detector's state:
        one group whose scale is its threshold)."""
        if isinstance(state["means"], torch.Tensor):
            group = Gaussians(np.asarray(state["means"], dtype=np.float32),
                              np.asarray(state["precision"], dtype=np.float32), float(state["shrinkage"]))
            return cls(layers=[], groups=[group], scales=[float(state["threshold"])], threshold=1.0,
                       quantile=float(state["quantile"]), n_fit=int(state["n_fit"]), n_val=int(state["n_val"]),
                   margin=float(state.get("margin", 1.0)))
        groups = [Gaussians(np.asarray(m, dtype=np.float32), np.asarray(p, dtype=np.float32), float(s))
                  for m, p, s in zip(state["means"], state["precision"], state["shrinkage"], strict=True)]
        return cls(layers=[str(n) for n in state["layers"]], groups=groups,
                   scales=[float(t) for t in state["scales"]], threshold=float(state["threshold"]),
                   quantile=float(state["quantile"]), n_fit=int(state["n_fit"]), n_val=int(state["n_val"]),
                   margin=float(state.get("margin", 1.0)))


def fit_feature_density(train: Sequence[np.ndarray], labels: np.ndarray, val: Sequence[np.ndarray],
                        quantile: float = 0.99, layers: Sequence[str] = (), margin: float = 1.0) -> FeatureDensity:
    """Fit the class-conditional Gaussians of each feature group on ``train``, the scales and the
    threshold on ``val``.

    Args:
        train: the training part's feature groups, each (N, D_l) (``layers`` first, embedding last).
        labels: (N,) class indices of the training images.
        val: the validation part's feature groups, each (M, D_l) (never the training part's: a
            training image lies closer to the means it helped to fit than a new image of its kind).
        quantile: the validation quantile that becomes each scale and the threshold, in (0, 1].
        layers: the names of the intermediate groups (``len(train) - 1`` of them).
        margin: the flag's distance in units of the threshold (>= 1).

    Raises:
        ValueError: too few images, mismatched groups, or a quantile outside (0, 1].
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"the OOD quantile must be in (0, 1], got {quantile}")
    if not margin >= 1.0:
        raise ValueError(f"the OOD margin must be >= 1, got {margin}")
    n, m = len(train[0]), len(val[0])
    if n < 4 or m < 2:
        raise ValueError(f"an OOD detector needs >= 4 training and >= 2 validation images, got {n} and {m}")
    if len(train) != len(val) or len(train) != len(layers) + 1:
        raise ValueError(f"{len(train)} training and {len(val)} validation feature groups for {len(layers)} layers")
    groups = [Gaussians.fit(f, labels) for f in train]
    scales = [float(np.quantile(g.distance(v), quantile)) for g, v in zip(groups, val)]
    if not all(np.isfinite(t) and t > 0 for t in scales):
        raise ValueError(f"OOD scales {scales} from {m} validation images are not all positive")
    det = FeatureDensity(list(layers), groups, scales, 1.0, float(quantile), n, m, float(margin))
    det.threshold = float(np.quantile(det._scaled(val), quantile))
    return det


def model_embedding(model: nn.Module, x: torch.Tensor, radiomics: torch.Tensor | None = None) -> torch.Tensor:
    """The embedding the model's head reads: ``model.embed(x)`` (``radiomics=`` for models taking it)."""
    return model.embed(x) if radiomics is None else model.embed(x, radiomics=radiomics)


def model_features(model: nn.Module, layers: Sequence[str], x: torch.Tensor,
                   radiomics: torch.Tensor | None = None, prefix: str = "") -> list[np.ndarray]:
    """The feature groups of a batch: the channel means of each of ``layers``' outputs, then the embedding.

    Args:
        model: a registry model (or a wrapper whose submodule ``prefix`` is one).
        layers: module names relative to the registry model.
        x: the input batch.
        radiomics: the lesions' feature vectors, for models that take them.
        prefix: where the registry model sits inside ``model`` (``"net."`` for a wrapper).
    """
    with FeatureTap(model, layers, prefix) as tap, torch.no_grad():
        e = model_embedding(model, x, radiomics)
    return tap.layer_means() + [e.detach().float().cpu().numpy()]


class FeatureTap:
    """The feature groups of :func:`model_features`, collected during a forward pass run anyway.

    Scoring already runs the network once (for the logit and its Grad-CAM map); a second pass for
    the detector doubled the cost of every input. Inside ``with FeatureTap(...) as tap`` forward
    hooks keep the channel means of ``layers`` and the input of the model's ``head``, each from
    the first pass only (occlusion maps and mirrored views run more passes after it). The head's
    input is the embedding only in eval mode (dropout is the identity there).

    Args:
        model: as for :func:`model_features`.
        layers: see :func:`model_features`.
        prefix: see :func:`model_features`.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], prefix: str = ""):
        self.model, self.layers, self.prefix = model, list(layers), prefix
        self._pooled: dict[str, torch.Tensor] = {}
        self._embedding: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> FeatureTap:
        def keep(name: str):
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                if name not in self._pooled:  # before any in-place activation changes it
                    self._pooled[name] = out.detach().float().mean(dim=(2, 3))
            return hook

        def keep_embedding(_m: nn.Module, inputs: tuple[Any, ...]) -> None:
            if self._embedding is None:
                self._embedding = inputs[0].detach().float()

        self._handles = [self.model.get_submodule(self.prefix + n).register_forward_hook(keep(n)) for n in self.layers]
        head = dict(self.model.named_modules()).get(self.prefix + "head")
        if head is not None:
            self._handles.append(head.register_forward_pre_hook(keep_embedding))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def layer_means(self) -> list[np.ndarray]:
        """The intermediate groups, in the order of ``layers``."""
        return [self._pooled[n].cpu().numpy() for n in self.layers]

    def groups(self) -> list[np.ndarray] | None:
        """Every group of :func:`model_features` from the pass run inside the ``with``; None when the
        model has no ``head`` or a training-mode pass (dropout on the embedding) ran instead."""
        if self._embedding is None or self.model.training or any(n not in self._pooled for n in self.layers):
            return None
        return self.layer_means() + [self._embedding.cpu().numpy()]
