"""Leakage-free splits: stratified, group-aware folds and validation parts.

A group (patient, or a set of duplicate images) always lands on one side of every split.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from breastai.core.keys import Keys

__all__ = ["group_kfold", "carve_validation", "fixed_split"]


def _labels_groups(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([r[Keys.LABEL] for r in records])
    groups = np.array([r[Keys.GROUP] for r in records])
    return labels, groups


def group_kfold(records: Sequence[dict[str, Any]], k: int, seed: int = 0) -> list[np.ndarray]:
    """Fold index arrays (held-out parts) of a stratified group K-fold.

    A ``fold`` column in the datalist, when present on every row, is used as given.
    """
    if all(r.get(Keys.FOLD) is not None for r in records):
        folds = np.array([r[Keys.FOLD] for r in records])
        return [np.flatnonzero(folds == f) for f in sorted(set(folds.tolist()))]
    labels, groups = _labels_groups(records)
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    n_groups = len(set(groups.tolist()))
    if n_groups < k:
        raise ValueError(f"{k} folds asked for but the data hold only {n_groups} groups")
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in skf.split(np.zeros(len(records)), labels, groups)]


def carve_validation(
    records: Sequence[dict[str, Any]], index: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into (train, val) parts, stratified and group-aware, val about ``fraction``."""
    index = np.asarray(index)
    if fraction <= 0:
        return index, index[:0]
    sub = [records[i] for i in index]
    labels, groups = _labels_groups(sub)
    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise ValueError(f"cannot carve a validation part from {len(sub)} rows in {n_groups} group(s)")
    k = min(max(2, int(round(1.0 / fraction))), n_groups)
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + 7919)
    tr, va = next(skf.split(np.zeros(len(sub)), labels, groups))
    return index[tr], index[va]


def fixed_split(records: Sequence[dict[str, Any]], val_fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Train/val/test index arrays from the ``split`` column, carving val from train if absent.

    Rows with ``split`` = test are held out; rows with ``split`` = val are validation. Without
    any val rows, a stratified group-aware validation part is carved from the training rows.
    """
    splits = np.array([r.get(Keys.SPLIT, "") or "train" for r in records])
    test = np.flatnonzero(splits == "test")
    val = np.flatnonzero(splits == "val")
    train = np.flatnonzero(splits == "train")
    _check_disjoint_groups(records, [train, val, test])
    if len(val) == 0:
        train, val = carve_validation(records, train, val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def _check_disjoint_groups(records: Sequence[dict[str, Any]], parts: list[np.ndarray]) -> None:
    seen: dict[str, int] = {}
    for pi, part in enumerate(parts):
        for i in part:
            g = records[i][Keys.GROUP]
            if seen.setdefault(g, pi) != pi:
                raise ValueError(f"group {g!r} appears in more than one split (case {records[i][Keys.CASE_ID]!r})")
