"""Evaluation metrics for binary malignancy scores (numpy / scipy / scikit-learn only).

Conventions used throughout:

- ``y`` holds 0/1 (or bool) ground truth, 1 = malignant (positive class).
- ``p`` holds scores; for the calibration metrics (Brier, ECE, NLL, reliability curve)
  they must be probabilities of the positive class in [0, 1].
- A case is called positive when ``p >= threshold``.

Degenerate input (empty, length mismatch, NaN, labels other than 0/1, and a single class
where a metric needs both) raises :class:`MetricError`, a ``ValueError``, with a message
that names the problem.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_curve

__all__ = [
    "MetricError",
    "check_scores",
    "roc_auc",
    "ece_noise_floor",
    "bootstrap_auc_ci",
    "bootstrap_roc_band",
    "choose_threshold",
    "binary_metrics",
    "brier",
    "ece",
    "nll",
    "reliability_curve",
    "summarise_folds",
    "evaluation_report",
]


class MetricError(ValueError):
    """The labels or scores cannot give the requested metric."""


def check_scores(y: Any, p: Any, *, both_classes: bool = False, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and scores and return them as int64 / float64 arrays.

    Args:
        y: 0/1 or bool labels.
        p: scores.
        both_classes: require at least one positive and one negative case.
        probabilities: require scores in [0, 1].

    Raises:
        MetricError: see the module docstring for the rules.
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise MetricError(f"labels and scores must be 1-D, got shapes {y.shape} and {p.shape}")
    if y.size != p.size:
        raise MetricError(f"length mismatch: {y.size} labels but {p.size} scores")
    if y.size == 0:
        raise MetricError("no cases: labels and scores are empty")
    if not np.all(np.isfinite(p)):
        bad = int(np.sum(~np.isfinite(p)))
        raise MetricError(f"{bad} score(s) are NaN or infinite")
    if y.dtype == bool:
        y = y.astype(np.int64)
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricError(f"labels must be 0/1, got dtype {y.dtype}") from None
    if not np.all((yf == 0) | (yf == 1)):
        raise MetricError(f"labels must be 0 or 1, got values {np.unique(y)[:5].tolist()}")
    y = yf.astype(np.int64)
    if both_classes and (y.min() == y.max()):
        only = "positive" if y[0] == 1 else "negative"
        raise MetricError(
            f"AUC is undefined with one class only: all {y.size} cases are {only}; "
            "the metric needs at least one positive and one negative case"
        )
    if probabilities and (p.min() < 0 or p.max() > 1):
        raise MetricError(f"probabilities must lie in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]")
    return y, p


def _auc_midrank(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score_pos > score_neg) + 0.5 P(tie)."""
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    m, n = pos.size, neg.size
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def roc_auc(y: Sequence[int], p: Sequence[float]) -> float:
    """Area under the ROC curve (ties count one half).

    Raises:
        MetricError: on degenerate input, including a single class (AUC undefined).
    """
    y, p = check_scores(y, p, both_classes=True)
    return _auc_midrank(p[y == 1], p[y == 0])


def bootstrap_auc_ci(
    y: Sequence[int], p: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC.

    Stratified: positives and negatives are resampled separately, each with its own
    size, so every replicate has the original class balance and a defined AUC.

    Args:
        y: 0/1 labels.
        p: scores.
        n_boot: number of bootstrap replicates.
        alpha: 1 - confidence level (0.05 gives a 95 % interval).
        seed: random seed; the result is deterministic given it.

    Returns:
        ``(low, high)``.
    """
    y, p = check_scores(y, p, both_classes=True)
    if n_boot < 1:
        raise MetricError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise MetricError(f"alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    pos, neg = p[y == 1], p[y == 0]
    m, n = pos.size, neg.size
    aucs = np.empty(n_boot)
    chunk = max(1, 2_000_000 // (m + n))  # bound memory for large test sets
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        sample = np.concatenate([pos[rng.integers(0, m, (b, m))], neg[rng.integers(0, n, (b, n))]], axis=1)
        ranks = stats.rankdata(sample, axis=1)
        aucs[start : start + b] = (ranks[:, :m].sum(1) - m * (m + 1) / 2) / (m * n)
    low, high = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_roc_band(
    y: Sequence[int], p: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, n_grid: int = 101
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise percentile bootstrap band of the ROC curve: sensitivity at each false positive rate.

    Resampled like :func:`bootstrap_auc_ci` (positives and negatives separately), so every
    replicate has both classes and a curve.

    Returns:
        ``(fpr, tpr_low, tpr_high)``, each of ``n_grid`` points, ``fpr`` from 0 to 1.
    """
    y, p = check_scores(y, p, both_classes=True)
    if n_boot < 1:
        raise MetricError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    pos, neg = p[y == 1], p[y == 0]
    yb = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    grid = np.linspace(0.0, 1.0, n_grid)
    tprs = np.empty((n_boot, n_grid))
    for b in range(n_boot):
        s = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        fpr, tpr, _ = roc_curve(yb, s)
        # the best sensitivity reached at or below each fpr: np.interp is undefined on the repeated fpr of a vertical step
        tprs[b] = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    low, high = np.quantile(tprs, [alpha / 2, 1 - alpha / 2], axis=0)
    return grid, low, high


_AT = re.compile(r"^(sensitivity|specificity)@([0-9.]+)$")


def choose_threshold(y: Sequence[int], p: Sequence[float], method: str = "youden") -> float:
    """Pick an operating threshold on the scores (a case is positive when ``p >= t``).

    Methods:
        ``"youden"``: maximise sensitivity + specificity - 1 (ties: the highest threshold).
        ``"sensitivity@X"``: the highest threshold whose sensitivity is at least X
        (so the best specificity given that sensitivity), e.g. ``"sensitivity@0.9"``.
        ``"specificity@X"``: the lowest threshold whose specificity is at least X.
        ``"closest"``: the ROC point closest to the top-left corner (0, 1).

    The returned value is one of the observed scores, so applying it to the same data
    reproduces the chosen ROC point exactly.
    """
    y, p = check_scores(y, p, both_classes=True)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive): not a usable operating point.
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    method = method.strip().lower()
    if method == "youden":
        # J * P * N in whole counts: equal J values must compare equal for "first maximum =
        # highest threshold" to hold (tpr - fpr in floats differs in the last bit).
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        i = int(np.argmax(np.rint(tpr * n_pos) * n_neg - np.rint(fpr * n_neg) * n_pos))
    elif method == "closest":
        i = int(np.argmin(fpr**2 + (1 - tpr) ** 2))
    else:
        m = _AT.match(method)
        if not m:
            raise MetricError(
                f"unknown threshold method {method!r}: use 'youden', 'closest', "
                "'sensitivity@0.9' or 'specificity@0.9' (any target in [0, 1])"
            )
        target = float(m.group(2))
        if not 0 <= target <= 1:
            raise MetricError(f"target {target} in {method!r} must lie in [0, 1]")
        if m.group(1) == "sensitivity":
            i = int(np.flatnonzero(tpr >= target - 1e-12)[0])  # tpr grows as thr falls
        else:
            ok = np.flatnonzero(1 - fpr >= target - 1e-12)
            if ok.size == 0:
                raise MetricError(f"no threshold reaches specificity {target}")
            i = int(ok[-1])
    return float(thr[i])


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_metrics(y: Sequence[int], p: Sequence[float], threshold: float) -> dict[str, float]:
    """Confusion-matrix metrics at ``threshold`` (positive when ``p >= threshold``).

    A ratio whose denominator is zero (e.g. sensitivity without positives) is NaN.

    Returns:
        sensitivity, specificity, balanced_accuracy, ppv, npv, accuracy, f1, threshold,
        and the counts tp, fp, tn, fn (as ints).
    """
    y, p = check_scores(y, p)
    if not np.isfinite(threshold):
        raise MetricError(f"threshold must be finite, got {threshold}")
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, y.size),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def brier(y: Sequence[int], p: Sequence[float]) -> float:
    """Brier score: mean of (p - y)^2 (0 is perfect; 0.25 for a constant 0.5)."""
    y, p = check_scores(y, p, probabilities=True)
    return float(np.mean((p - y) ** 2))


def nll(y: Sequence[int], p: Sequence[float], eps: float = 1e-7) -> float:
    """Mean negative log-likelihood (binary cross-entropy, natural log).

    Probabilities are clipped to [eps, 1 - eps] so a confident mistake costs
    ``-log(eps)`` (about 16.1) instead of infinity.
    """
    y, p = check_scores(y, p, probabilities=True)
    q = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def reliability_curve(y: Sequence[int], p: Sequence[float], n_bins: int = 10) -> dict[str, np.ndarray]:
    """Bin the positive-class probability into ``n_bins`` equal-width bins on [0, 1].

    Bin b holds ``edges[b] <= p < edges[b+1]``; the last bin also holds p == 1.

    Returns:
        ``edges`` (n_bins + 1), and per bin: ``count``, ``mean_pred`` (mean probability),
        ``frac_pos`` (observed fraction of positives); the last two are NaN for empty bins.
    """
    y, p = check_scores(y, p, probabilities=True)
    if int(n_bins) != n_bins or n_bins < 1:
        raise MetricError(f"n_bins must be a positive integer, got {n_bins}")
    n_bins = int(n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins) / count
    return {"edges": edges, "count": count, "mean_pred": mean_pred, "frac_pos": frac_pos}


def ece(y: Sequence[int], p: Sequence[float], n_bins: int = 10) -> float:
    """Expected calibration error of the positive-class probability.

    Definition: with the equal-width bins of :func:`reliability_curve`,
    ``ECE = sum_b (n_b / N) * |frac_pos_b - mean_pred_b|``: the gap between the observed
    fraction of positives and the mean predicted probability in each bin, weighted by the
    share of cases in the bin; empty bins contribute nothing. (This is the binary,
    positive-class ECE, not the "top-label confidence" ECE used for multi-class models.)
    """
    r = reliability_curve(y, p, n_bins)
    filled = r["count"] > 0
    w = r["count"][filled] / r["count"].sum()
    return float(np.sum(w * np.abs(r["frac_pos"][filled] - r["mean_pred"][filled])))


def ece_noise_floor(p: Sequence[float], n_bins: int = 10, n_draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """ECE that a PERFECTLY calibrated model would still show on a sample of this size.

    Labels are drawn as ``y_i ~ Bernoulli(p_i)`` (so ``p`` is calibrated by construction) and
    :func:`ece` is computed ``n_draws`` times. A measured ECE within this spread is not evidence
    of miscalibration: with 126 cases and 10 bins the floor is about 0.05 for the mostly confident
    probabilities of the BUSI models, and about 0.09 for probabilities spread evenly over [0, 1].

    Returns:
        ``mean`` and ``q95`` (95th percentile) of the ECE under perfect calibration, and ``n``.
    """
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    draws = np.array([ece((rng.random(p.size) < p).astype(int), p, n_bins) for _ in range(n_draws)])
    return {"mean": float(draws.mean()), "q95": float(np.quantile(draws, 0.95)), "n": int(p.size)}


def summarise_folds(fold_metrics: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof=1) of each numeric metric across folds.

    Non-numeric values are skipped; NaN values (e.g. an undefined PPV) are left out of
    that metric's summary and ``n`` says how many folds contributed. With one fold the
    sd is NaN.

    Returns:
        ``{metric: {"mean": ..., "sd": ..., "n": ...}}`` in first-seen key order.
    """
    values: dict[str, list[float]] = {}
    for fm in fold_metrics:
        for k, v in fm.items():
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                continue
            values.setdefault(k, [])
            if np.isfinite(v):
                values[k].append(float(v))
    if not values:
        raise MetricError("no numeric metrics to summarise (empty list of folds?)")
    out = {}
    for k, vs in values.items():
        arr = np.asarray(vs)
        out[k] = {
            "mean": float(arr.mean()) if arr.size else float("nan"),
            "sd": float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
            "n": int(arr.size),
        }
    return out


def evaluation_report(
    y: Sequence[int],
    p: Sequence[float],
    threshold: float | None = None,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    n_bins: int = 10,
    seed: int = 0,
    scores: Sequence[float] | None = None,
) -> dict[str, Any]:
    """All headline metrics of one set of probabilities, as a flat JSON-friendly dict.

    Args:
        y: 0/1 labels (both classes required).
        p: positive-class probabilities in [0, 1].
        threshold: operating point; when None it is chosen on these data by Youden's J,
            which is optimistic: prefer a threshold fixed on validation data.
        n_boot, alpha, seed: bootstrap CI of the AUC (n_boot 0: none, the bounds NaN).
        n_bins: bins of the ECE.
        scores: what the AUC and its CI rank (default ``p``); pass the log-odds that ``p`` came
            from: a sharp model's probabilities round to exactly 0 or 1 in float64 (|logit| > 37)
            and tie, which lowers the AUC of a ranking the log-odds still hold.

    Returns:
        auc, auc_ci_low, auc_ci_high, ci_level, sensitivity, specificity,
        balanced_accuracy, ppv, npv, accuracy, f1, tp, fp, tn, fn, brier, ece, nll,
        n, n_pos, threshold, threshold_source.
    """
    y, p = check_scores(y, p, both_classes=True, probabilities=True)
    source = "given"
    if threshold is None:
        threshold, source = choose_threshold(y, p, "youden"), "youden_on_these_data"
    r = p if scores is None else check_scores(y, scores)[1]
    # n_boot 0: no interval wanted (a caller that only needs the probabilities), reported as NaN
    low, high = bootstrap_auc_ci(y, r, n_boot=n_boot, alpha=alpha, seed=seed) if n_boot else (float("nan"),) * 2
    report: dict[str, Any] = {
        "auc": roc_auc(y, r),
        "auc_ci_low": low,
        "auc_ci_high": high,
        "ci_level": 1 - alpha,
    }
    report.update(binary_metrics(y, p, threshold))
    report.update(
        {
            "brier": brier(y, p),
            "ece": ece(y, p, n_bins),
            "nll": nll(y, p),
            "n": int(y.size),
            "n_pos": int(y.sum()),
            "threshold_source": source,
        }
    )
    return report
