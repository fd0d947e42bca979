"""Leakage-free splits: stratified, group-aware folds and validation parts.

A group (patient, or a set of duplicate images) always lands on one side of every split; rows
whose image files are byte-identical are one group
(:func:`breastai.data.provenance.join_identical_images`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from breastai.core.keys import Keys
from breastai.data.provenance import join_identical_images

__all__ = ["group_kfold", "carve_validation", "fixed_split", "fixed_folds"]


def _labels_groups(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([r[Keys.LABEL] for r in records])
    groups = np.array([r[Keys.GROUP] for r in records])
    return labels, groups


def group_kfold(records: Sequence[dict[str, Any]], k: int, seed: int = 0) -> list[np.ndarray]:
    """Fold index arrays (held-out parts) of a stratified group K-fold.

    A ``fold`` column in the datalist, when present on every row, is used as given.
    """
    given = fixed_folds(records)
    if given is not None:
        folds = np.array(given)
        return [np.flatnonzero(folds == f) for f in sorted(set(folds.tolist()))]
    labels, groups = _labels_groups(records)
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    n_groups = len(set(groups.tolist()))
    if n_groups < k:
        raise ValueError(f"{k} folds asked for but the data hold only {n_groups} groups")
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in skf.split(np.zeros(len(records)), labels, groups)]


def fixed_folds(records: Sequence[dict[str, Any]]) -> list[int] | None:
    """The ``fold`` of every record when the datalist fixes them all (then they are used as given), else None."""
    folds = [r.get(Keys.FOLD) for r in records]
    return folds if all(f is not None for f in folds) else None


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


def fixed_split(records: Sequence[dict[str, Any]], val_fraction: float, seed: int = 0,
                source: str | Path | None = None) -> dict[str, np.ndarray]:
    """Train/val/test index arrays from the ``split`` column, carving val from train if absent.

    Rows with ``split`` = test are held out; rows with ``split`` = val are validation. Without
    any val rows, a stratified group-aware validation part is carved from the training rows.
    Rows with byte-identical image files are one group.

    Args:
        records: datalist records, in datalist order.
        val_fraction: share of the training rows carved out for validation when no row has ``split`` = val.
        seed: seed of the carved validation part.
        source: the datalist, for messages.

    Raises:
        DatalistError: identical images with different labels or in two ``split`` parts.
        ValueError: a group in two ``split`` parts, or too few groups to carve a validation part.
    """
    splits = np.array([r.get(Keys.SPLIT, "") or "train" for r in records])
    records = join_identical_images(records, splits.tolist(), Keys.SPLIT, source)
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
