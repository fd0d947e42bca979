"""Fitting the radiomics and fusion models' feature heads on a training part.

Feature selection and standardisation (:func:`select_features`) and the closed-form logistic
regression (:func:`fit_logistic`) only ever see the training part; the feature vectors come from
:func:`breastai.radiomics.dataset.radiomics_matrix`, i.e. from the cache the training Dataset's
preset filled as it decoded the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from breastai.radiomics.dataset import radiomics_matrix


def needs_radiomics(cfg: dict[str, Any]) -> bool:
    """Whether ``cfg['model']['name']`` is a model called with a radiomics vector (its spec's ``requires_radiomics``).

    Raises:
        KeyError: the model is not registered.
    """
    from breastai.models.registry import get_spec

    return get_spec(cfg["model"]["name"]).requires_radiomics


@dataclass
class Selection:
    """Features kept (in raw order of preference) and their training-part standardisation."""

    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    dropped: dict[str, list[str]] = field(default_factory=dict)


def select_features(x: np.ndarray, y: np.ndarray, names: Sequence[str], corr: float = 0.95) -> Selection:
    """Selection fitted on training rows only.

    Drops features with a non-finite value in any row, near-constant ones (sd below 1e-8 of
    their magnitude, or one value in >= 95 % of rows), then, going through the rest from the
    most to the least discriminative (|AUC - 0.5|, ties by name order), drops each feature whose
    |Spearman r| with an already kept one exceeds ``corr``. Mean and sd of the kept ones follow.

    Raises:
        ValueError: nothing left, or shapes that do not match.
    """
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] != len(y):
        raise ValueError(f"features {x.shape}, {len(names)} names and {len(y)} labels do not match")
    dropped: dict[str, list[str]] = {"non_finite": [], "constant": [], "correlated": []}
    keep = []
    for j, n in enumerate(names):
        col = x[:, j]
        if not np.isfinite(col).all():
            dropped["non_finite"].append(n)
            continue
        sd = col.std()
        _, counts = np.unique(col, return_counts=True)
        if sd <= 1e-8 * max(1.0, float(np.abs(col).mean())) or counts.max() >= 0.95 * len(col):
            dropped["constant"].append(n)
            continue
        keep.append(j)
    if not keep:
        raise ValueError("radiomics selection: every feature is non-finite or constant on the training part")
    xs = x[:, keep]
    order = np.argsort(-_auc_strength(xs, y), kind="stable")
    ranks = rankdata(xs, axis=0)
    rho = np.abs(np.corrcoef(ranks, rowvar=False)) if len(keep) > 1 else np.ones((1, 1))
    chosen: list[int] = []
    for j in order:
        if chosen and float(np.max(rho[j, chosen])) > corr:
            dropped["correlated"].append(names[keep[j]])
            continue
        chosen.append(int(j))
    cols = [keep[j] for j in chosen]
    sel = x[:, cols]
    return Selection([names[c] for c in cols], sel.mean(0), sel.std(0), dropped)


def fit_logistic(z: np.ndarray, y: np.ndarray, groups: Sequence[Any] | None = None, penalty: str = "l2",
                 seed: int = 0) -> dict[str, Any]:
    """Class-balanced logistic regression on standardised features, C by inner group-aware CV (AUC).

    Returns:
        ``coef`` (F,), ``intercept``, ``C`` and ``fit_loss`` (training log loss).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    if penalty not in ("l1", "l2"):
        raise ValueError(f"model.radiomics_penalty must be l1 or l2, got {penalty!r}")
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups if groups is not None else np.arange(len(y)), dtype=str)
    cs = np.logspace(-3, 2, 11)

    import sklearn

    # scikit-learn >= 1.8 spells the penalty as l1_ratio (``penalty`` is deprecated there).
    new_api = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
    kind = {"l1_ratio": float(penalty == "l1")} if new_api else {"penalty": penalty}

    def model(c: float) -> LogisticRegression:
        # liblinear: exact and fast on a few hundred rows (lbfgs is ~20x slower here); a large
        # intercept_scaling keeps its regularisation of the intercept negligible.
        return LogisticRegression(C=c, solver="liblinear", intercept_scaling=100.0, class_weight="balanced",
                                  max_iter=5000, **kind)

    k = int(min(5, np.bincount(y).min(), len(np.unique(groups))))
    best_c = 1.0
    if k >= 2:
        scores = np.zeros(len(cs))
        splits = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(z, y, groups))
        for tr, va in splits:
            if len(np.unique(y[va])) < 2 or len(np.unique(y[tr])) < 2:
                continue
            for i, c in enumerate(cs):
                scores[i] += roc_auc_score(y[va], model(c).fit(z[tr], y[tr]).decision_function(z[va]))
        # Ties go to the stronger regularisation (smaller C): the simpler model.
        best_c = float(cs[int(np.argmax(scores > scores.max() - 1e-9))]) if scores.any() else 1.0
    lr = model(best_c).fit(z, y)
    return {"coef": lr.coef_.reshape(-1).astype(np.float64), "intercept": float(lr.intercept_[0]), "C": best_c,
            "fit_loss": float(log_loss(y, lr.predict_proba(z)[:, 1], labels=[0, 1]))}


def radiomics_model_kwargs(cfg: dict[str, Any], train_records: Sequence[dict[str, Any]], y_train: np.ndarray) -> dict[str, Any]:
    """``create_model`` arguments of a radiomics model, fitted on the training part only.

    Reads the training rows' features (cached by the training Dataset; computed for rows it has not
    measured), selects and standardises them and, for the closed-form ``radiomics_logreg``, fits
    the logistic regression.
    """
    mc = cfg["model"]
    names, x = radiomics_matrix(cfg, train_records)
    sel = select_features(x, y_train, names, corr=float(mc.get("select_corr", 0.95)))
    stats: dict[str, Any] = {"mean": sel.mean, "scale": sel.scale}
    prior = bool(mc.get("fusion_prior", False)) and mc["name"] != "radiomics_logreg"
    if mc["name"] == "radiomics_logreg" or prior:
        z = _standardise(x, sel, names)
        groups = [r.get("group") or r.get("case_id") for r in train_records]
        stats.update(fit_logistic(z, y_train, groups, penalty=str(mc.get("radiomics_penalty", "l2")), seed=int(cfg["seed"])))
    return {"backbone": mc.get("backbone", "efficientnet_lite0"), "fusion_dim": int(mc.get("fusion_dim", 128)),
            "feature_names": names, "selected": sel.names, "stats": stats, "prior": prior}


def _auc_strength(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|AUC - 0.5| of every column (Mann-Whitney via ranks), the order of preference."""
    from scipy.stats import rankdata

    r = rankdata(x, axis=0)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n0 == 0 or n1 == 0:
        return np.zeros(x.shape[1])
    auc = (r[y == 1].sum(0) - n1 * (n1 + 1) / 2) / (n0 * n1)
    return np.abs(auc - 0.5)


def _standardise(x: np.ndarray, sel: Selection, names: Sequence[str], clip: float = 10.0) -> np.ndarray:
    pos = {n: i for i, n in enumerate(names)}
    z = (x[:, [pos[n] for n in sel.names]] - sel.mean) / sel.scale
    # Same transform as breastai.models.fusion.RadiomicsInput, so sklearn sees what the module computes.
    return np.clip(np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip), -clip, clip)
