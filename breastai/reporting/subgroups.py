"""Metrics per subgroup (scanner, view, side, age band, site, ...) of one set of scored cases.

For each value of each subgrouping column: ``n``, ``n_pos``, ``prevalence``, the AUC with its
stratified bootstrap CI (:func:`breastai.reporting.metrics.bootstrap_auc_ci`), sensitivity and
specificity at the operating threshold, and the ECE. A subgroup with fewer than
:data:`MIN_PER_CLASS` malignant or benign cases gets ``auc: null`` (and null bounds) with the
reason in ``auc_note``: a CI from a handful of cases would be a number without meaning. A ratio
without a denominator (sensitivity with no malignant case) is null too.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from breastai.reporting.metrics import binary_metrics, bootstrap_auc_ci, check_scores, ece, roc_auc

__all__ = ["MIN_PER_CLASS", "MISSING", "subgroup_metrics", "subgroup_report"]

MIN_PER_CLASS = 5
MISSING = "(missing)"  # the value of a case whose column is empty


def _finite_or_none(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def subgroup_metrics(y: Sequence[int], p: Sequence[float], threshold: float, scores: Sequence[float] | None = None,
                     n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The figures of one subgroup (see the module docstring).

    Args:
        y: 0/1 labels.
        p: calibrated probabilities.
        threshold: the operating threshold (positive when ``p >= threshold``).
        scores: what the AUC ranks (default ``p``; pass the log-odds, which never tie at 0 or 1).
        n_boot, seed: the bootstrap of the AUC's CI.
    """
    y, p = check_scores(y, p, probabilities=True)
    r = p if scores is None else check_scores(y, scores)[1]
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    out: dict[str, Any] = {"n": int(y.size), "n_pos": n_pos, "prevalence": n_pos / y.size,
                           "auc": None, "auc_ci_low": None, "auc_ci_high": None, "auc_note": None}
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        out["auc_note"] = (f"too few cases for an AUC with a CI: {n_pos} malignant and {n_neg} benign "
                           f"(at least {MIN_PER_CLASS} of each needed)")
    else:
        low, high = bootstrap_auc_ci(y, r, n_boot=n_boot, seed=seed)
        out.update(auc=roc_auc(y, r), auc_ci_low=low, auc_ci_high=high)
    m = binary_metrics(y, p, threshold)
    out.update(sensitivity=_finite_or_none(m["sensitivity"]), specificity=_finite_or_none(m["specificity"]),
               threshold=float(threshold), ece=ece(y, p))
    return out


def subgroup_report(y: Sequence[int], p: Sequence[float], threshold: float, columns: Mapping[str, Sequence[Any]],
                    scores: Sequence[float] | None = None, n_boot: int = 2000, seed: int = 0
                    ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{column: {value: figures}}`` for every column of ``columns`` (one value per case), values sorted.

    Raises:
        ValueError: a column whose length differs from the cases'.
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    r = p if scores is None else np.asarray(scores, dtype=np.float64)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for col, values in columns.items():
        values = ["" if v is None else str(v) for v in values]
        if len(values) != y.size:
            raise ValueError(f"subgroup column {col!r} has {len(values)} values for {y.size} cases")
        out[col] = {}
        for v in sorted(set(values)):
            idx = np.array([x == v for x in values])
            out[col][v or MISSING] = subgroup_metrics(y[idx], p[idx], threshold, r[idx], n_boot=n_boot, seed=seed)
    return out
