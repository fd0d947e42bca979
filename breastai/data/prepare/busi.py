"""BUSI breast ultrasound: one row per image, duplicates grouped, label conflicts dropped.

Layout (the public download): ``<root>/{benign,malignant,normal}/<class> (N).png`` with masks
``<class> (N)_mask.png`` and, for some lesions, ``_mask_1.png``, ``_mask_2.png`` (their union
is the lesion mask). BUSI has no patient identifiers but holds exact and near copies of
frames, some filed under two classes; :mod:`breastai.data.dedup` finds them and each copy
family becomes one group, so no split separates them. A group whose copies carry different
labels cannot be trusted and is dropped (or kept and flagged with ``keep_conflicts``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

from breastai.data.dedup import DedupConfig, DedupResult, find_duplicates
from breastai.data.prepare.registry import Option, Preparer, register_preparer
from breastai.data.prepare.report import PrepareReport

__all__ = ["BUSI_CLASSES", "BUSI_SITE", "scan_busi", "busi_root", "prepare_busi"]

BUSI_CLASSES = ("benign", "malignant", "normal")
BUSI_SITE = "busi"  # the ``site`` column of every row
_NAME = re.compile(r"^(benign|malignant|normal) \((\d+)\)(_mask(?:_(\d+))?)?\.png$")


def busi_root(root: str | Path) -> Path:
    """The folder holding ``benign/`` and ``malignant/``: ``root`` or ``root/Dataset_BUSI_with_GT``."""
    root = Path(root)
    for cand in (root, root / "Dataset_BUSI_with_GT"):
        if (cand / "benign").is_dir() and (cand / "malignant").is_dir():
            return cand
    raise FileNotFoundError(f"{root}: no BUSI layout found (expected benign/ and malignant/ folders)")


def scan_busi(root: str | Path, include_normal: bool = False) -> tuple[list[dict], list[str]]:
    """Rows (case_id, image, mask list, label) for every BUSI image, sorted by class and number.

    Returns:
        (rows, notes): notes name files that do not follow the BUSI naming or masks without image.
    """
    root = busi_root(root)
    classes = [c for c in BUSI_CLASSES if include_normal or c != "normal"]
    rows, notes = [], []
    for cls in classes:
        folder = root / cls
        if not folder.is_dir():
            notes.append(f"{folder}: class folder missing")
            continue
        images: dict[int, Path] = {}
        masks: dict[int, list[tuple[int, Path]]] = {}
        for p in sorted(folder.iterdir()):
            m = _NAME.match(p.name)
            if not m or m.group(1) != cls:
                if p.is_file() and not p.name.startswith("."):
                    notes.append(f"{p}: name does not follow '{cls} (N)[_mask[_K]].png'; ignored")
                continue
            n = int(m.group(2))
            if m.group(3):
                masks.setdefault(n, []).append((int(m.group(4)) + 1 if m.group(4) else 0, p))
            else:
                images[n] = p
        for n in sorted(set(masks) - set(images)):
            notes.append(f"{folder}: mask(s) of {cls} ({n}) without the image; ignored")
        for n in sorted(images):
            rows.append(
                {
                    "case_id": f"{cls}_{n}",
                    "image": str(images[n]),
                    "mask": [str(p) for _, p in sorted(masks.get(n, []))],
                    "label": cls,
                }
            )
    return rows, notes


def prepare_busi(
    root: str | Path,
    out: str | Path,
    include_normal: bool = False,
    keep_conflicts: bool = False,
    config: DedupConfig | None = None,
    progress: Callable[[str], None] | None = None,
    dedup: DedupResult | None = None,
) -> PrepareReport:
    """Datalist of BUSI with duplicate groups.

    Args:
        root: ``Dataset_BUSI_with_GT`` or the folder above it.
        out: datalist to write (``.csv`` or ``.json``).
        include_normal: also list ``normal/`` images (label ``normal``); they then take part
            in duplicate detection too.
        keep_conflicts: keep groups whose copies carry different labels, with a ``conflict``
            column naming the labels, instead of dropping them.
        config: duplicate detector parameters.
        progress: optional callback receiving short status lines.
        dedup: precomputed duplicate result for the rows of :func:`scan_busi` (tests).

    Returns:
        The report. Rows have ``group`` ids ``g0001``... in row order, shared by copies, and
        the extra columns ``site`` (``busi``), ``modality`` (``US``) and ``group_size``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    rows, notes = scan_busi(root, include_normal)
    if not rows:
        raise ValueError(f"{root}: no BUSI images found")
    if dedup is None:
        dedup = find_duplicates([r["image"] for r in rows], config, progress=progress)
    if len(dedup.groups) != len(rows):
        raise ValueError(f"duplicate result covers {len(dedup.groups)} images, expected {len(rows)}")
    gid: dict[int, str] = {}
    members: dict[int, list[int]] = {}
    for k, g in enumerate(dedup.groups):
        gid.setdefault(g, f"g{len(gid) + 1:04d}")
        members.setdefault(g, []).append(k)
    report = PrepareReport("busi", notes=notes)
    kept = []
    n_conflicts = 0
    for k, row in enumerate(rows):
        g = dedup.groups[k]
        labels = sorted({rows[i]["label"] for i in members[g]})
        row = dict(row, group=gid[g], site=BUSI_SITE, modality="US", group_size=len(members[g]))
        if len(labels) > 1:
            if row["case_id"] == rows[members[g][0]]["case_id"]:
                n_conflicts += 1
            if not keep_conflicts:
                report.dropped.append((row["case_id"], f"duplicate group with conflicting labels ({'/'.join(labels)})"))
                continue
            row["conflict"] = "/".join(labels)
        elif keep_conflicts:
            row["conflict"] = ""
        kept.append(row)
    if n_conflicts:
        verb = "kept and flagged in column 'conflict'" if keep_conflicts else "dropped"
        report.notes.append(f"{n_conflicts} duplicate groups with conflicting labels {verb}")
    report.count_groups(row["group"] for row in kept)  # the groups of the datalist written, as mias.py counts them
    return report.write(kept, out, t0, f"{root}: every image was dropped")


_DEDUP = DedupConfig()


def _prepare_busi_options(
    root: str | Path,
    out: str | Path,
    include_normal: bool = False,
    keep_conflicts: bool = False,
    threshold: float = _DEDUP.threshold,
    coarse_threshold: float = _DEDUP.coarse_threshold,
) -> PrepareReport:
    """:func:`prepare_busi` with the duplicate detector's thresholds as plain options (the registry's)."""
    return prepare_busi(
        root,
        out,
        include_normal=include_normal,
        keep_conflicts=keep_conflicts,
        config=DedupConfig(threshold=threshold, coarse_threshold=coarse_threshold),
    )


register_preparer(
    Preparer(
        name="busi",
        run=_prepare_busi_options,
        help="BUSI breast ultrasound (Dataset_BUSI_with_GT)",
        description="One row per BUSI image with the union of its masks. Exact and near-duplicate "
        "images (re-cropped, re-scaled, adjacent frames) share a group; a group holding "
        "conflicting labels is dropped unless --keep-conflicts.",
        root_help="folder holding benign/, malignant/ (and normal/)",
        options=(
            Option("include_normal", "also list normal/ images (label 'normal')", switch=True),
            Option(
                "keep_conflicts",
                "keep duplicate groups with conflicting labels, flagged in a 'conflict' column",
                switch=True,
            ),
            Option(
                "threshold",
                "block score (median/lower-quartile NCC of sub-blocks of the best match) at which "
                f"two images are copies (default {_DEDUP.threshold}); lower merges more",
                type=float,
                default=_DEDUP.threshold,
            ),
            Option(
                "coarse_threshold",
                f"shortlist NCC below which a pair is not verified (default {_DEDUP.coarse_threshold})",
                type=float,
                default=_DEDUP.coarse_threshold,
            ),
        ),
    )
)
