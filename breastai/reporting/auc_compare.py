"""Comparing and bounding AUCs beyond one bootstrap: DeLong's variance and test for two correlated
AUCs, and a paired bootstrap interval of the difference of two scorings of the same cases.

:mod:`breastai.reporting.metrics` holds the metrics of one scoring (its AUC, bootstrap CI,
threshold metrics, calibration); this module holds what compares two of them, which the
benchmarks judging one recipe against another use. Same conventions: ``y`` 0/1 with 1 malignant,
degenerate input raises :class:`~breastai.reporting.metrics.MetricError`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

from breastai.reporting.metrics import MetricError, check_scores, roc_auc

__all__ = ["paired_auc_difference_ci", "delong_auc_variance", "delong_test"]


def paired_auc_difference_ci(
    y: Sequence[int], a: Sequence[float], b: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``AUC(a) - AUC(b)`` of two scorings of the same cases, with its paired percentile bootstrap interval.

    The cases are resampled together (not per class, unlike :func:`bootstrap_auc_ci`), so each
    replicate compares both scorings on the same draw; a draw holding one class only is skipped.
    (:func:`delong_test` gives the analytic test of the same difference.)

    Returns:
        ``(difference, low, high)``.
    """
    y, a = check_scores(y, a, both_classes=True)
    _, b = check_scores(y, b)
    if n_boot < 1:
        raise MetricError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() != y[i].max():
            d.append(roc_auc(y[i], a[i]) - roc_auc(y[i], b[i]))
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return roc_auc(y, a) - roc_auc(y, b), float(low), float(high)


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Fast DeLong structural components (Sun & Xu 2014) for one score vector.

    Returns the AUC, V10 (one value per positive: fraction of negatives it beats) and
    V01 (one per negative: fraction of positives that beat it), computed from midranks
    in O(N log N) instead of the O(m n) pairwise comparison.
    """
    m, n = pos.size, neg.size
    tz = stats.rankdata(np.concatenate([pos, neg]))
    tx, ty = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    auc = float((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
    return auc, v10, v01


def delong_auc_variance(y: Sequence[int], p: Sequence[float]) -> tuple[float, float]:
    """AUC and its DeLong variance ``var(V10)/m + var(V01)/n`` (ddof=1)."""
    y, p = check_scores(y, p, both_classes=True)
    pos, neg = p[y == 1], p[y == 0]
    if min(pos.size, neg.size) < 2:
        raise MetricError("DeLong variance needs at least 2 positive and 2 negative cases")
    auc, v10, v01 = _placements(pos, neg)
    return auc, float(np.var(v10, ddof=1) / pos.size + np.var(v01, ddof=1) / neg.size)


def delong_test(y: Sequence[int], p1: Sequence[float], p2: Sequence[float]) -> tuple[float, float, float, float]:
    """DeLong test for two correlated AUCs (two models scored on the same cases).

    Uses the fast algorithm of Sun & Xu (IEEE Signal Process. Lett. 21:1389, 2014) for
    the structural components of DeLong, DeLong & Clarke-Pearson (Biometrics 44:837,
    1988). ``z = (auc1 - auc2) / sqrt(var1 + var2 - 2 cov)``; the p-value is two-sided.
    If the difference has zero variance (e.g. identical rankings) z is 0 and p is 1
    when the AUCs are equal.

    Returns:
        ``(auc1, auc2, z, p_value)``.
    """
    y, a = check_scores(y, p1, both_classes=True)
    _, b = check_scores(y, p2)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if min(m, n) < 2:
        raise MetricError("DeLong test needs at least 2 positive and 2 negative cases")
    auc1, v10a, v01a = _placements(a[pos], a[neg])
    auc2, v10b, v01b = _placements(b[pos], b[neg])
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = auc1 - auc2
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    p_value = float(2 * stats.norm.sf(abs(z)))
    return auc1, auc2, float(z), p_value
