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

__all__ = ["group_kfold", "carve_validation", "fixed_split", "fixed_folds", "record_sites", "site_strata", "site_folds"]


def _labels_groups(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([r[Keys.LABEL] for r in records])
    groups = np.array([r[Keys.GROUP] for r in records])
    return labels, groups


def group_kfold(records: Sequence[dict[str, Any]], k: int, seed: int = 0,
                strata: Sequence[str] | None = None) -> list[np.ndarray]:
    """Fold index arrays (held-out parts) of a stratified group K-fold.

    A ``fold`` column in the datalist, when present on every row, is used as given.

    Args:
        records: datalist records.
        k: number of folds.
        seed: seed of the shuffled folds.
        strata: the stratification key of each record (:func:`site_strata`); None: the label.
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
    y = labels if strata is None else np.asarray(strata)
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in skf.split(np.zeros(len(records)), y, groups)]


def fixed_folds(records: Sequence[dict[str, Any]]) -> list[int] | None:
    """The ``fold`` of every record when the datalist fixes them all (then they are used as given), else None."""
    folds = [r.get(Keys.FOLD) for r in records]
    return folds if all(f is not None for f in folds) else None


def carve_validation(
    records: Sequence[dict[str, Any]], index: np.ndarray, fraction: float, seed: int = 0,
    strata: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into (train, val) parts, stratified and group-aware, val about ``fraction``.

    ``strata``: the stratification key of every record of ``records`` (not only of ``index``;
    :func:`site_strata`); None: the label.
    """
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
    y = labels if strata is None else np.asarray(strata)[index]
    tr, va = next(skf.split(np.zeros(len(sub)), y, groups))
    return index[tr], index[va]


def record_sites(records: Sequence[dict[str, Any]]) -> list[str] | None:
    """The ``site`` of every record (stripped text, ``""`` where a row has none), or None when no
    row names a site (a datalist without sites)."""
    sites = [str(r.get(Keys.SITE) or "").strip() for r in records]
    return sites if any(sites) else None


def site_strata(records: Sequence[dict[str, Any]]) -> list[str] | None:
    """Stratification keys ``site|label`` for mixed-site data, None for data of one site or none.

    None keeps the label-only stratification, so a datalist without sites (or of one site) gets
    exactly the folds it got before sites existed.
    """
    sites = record_sites(records)
    if sites is None or len(set(sites)) < 2:
        return None
    return [f"{s}|{r[Keys.LABEL]}" for s, r in zip(sites, records)]


def site_folds(records: Sequence[dict[str, Any]], source: str | Path | None = None
               ) -> list[tuple[str, np.ndarray]]:
    """Leave-one-site-out folds: ``(site, held-out index)`` for each distinct site, sorted by name.

    Raises:
        ValueError: rows without a site, fewer than 2 sites, a group in two sites, or a site whose
            rows hold one class only (its held-out AUC would be undefined); the message names the
            site or a row.
    """
    where = f"{source}: " if source else ""
    sites = record_sites(records)
    if sites is None:
        raise ValueError(f"{where}--folds sites needs a 'site' column in the datalist (breastai prepare writes it; "
                         "breastai prepare merge concatenates several sites)")
    missing = [r[Keys.CASE_ID] for s, r in zip(sites, records) if not s]
    if missing:
        raise ValueError(f"{where}--folds sites: {len(missing)} row(s) without a site, e.g. case {missing[0]!r}; "
                         "every row needs one")
    names = sorted(set(sites))
    if len(names) < 2:
        raise ValueError(f"{where}--folds sites needs at least 2 sites, the datalist has 1 ({names[0]!r})")
    # A patient seen at two sites would be trained on and tested on in the same fold.
    site_of: dict[str, str] = {}
    for s, r in zip(sites, records):
        if site_of.setdefault(str(r[Keys.GROUP]), s) != s:
            raise ValueError(f"{where}--folds sites: group {r[Keys.GROUP]!r} is in sites {site_of[str(r[Keys.GROUP])]!r} "
                             f"and {s!r} (case {r[Keys.CASE_ID]!r}); a group must belong to one site")
    arr = np.array(sites)
    out = []
    for name in names:
        idx = np.flatnonzero(arr == name)
        classes = {records[i][Keys.LABEL] for i in idx}
        if len(classes) < 2:
            raise ValueError(f"{where}--folds sites: site {name!r} has only {next(iter(classes))!r} cases "
                             f"({len(idx)} rows): its held-out AUC is undefined; drop the site or add cases")
        out.append((name, idx))
    return out


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
