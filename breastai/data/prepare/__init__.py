"""Turn public dataset layouts into datalists (``breastai prepare ...``).

Each preparer scans a dataset folder, builds one datalist row per image or finding, assigns
groups (patients or duplicate copies) so that splits never separate related rows, writes the
datalist with :func:`breastai.data.datalist.write_datalist` (CSV or JSON by suffix, paths
relative to the datalist) and returns a :class:`PrepareReport`.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterable

__all__ = [
    "PrepareReport",
    "add_parser",
    "prepare_busi",
    "prepare_mias",
    "prepare_folder",
]


@dataclass
class PrepareReport:
    """What a preparer wrote and what it left out.

    Attributes:
        dataset: dataset name (``busi``, ``mias``, ``folder``).
        out: datalist written.
        counts: rows written per label.
        duplicate_groups: groups of more than one row found by duplicate detection (or the
            patient grouping), before any were dropped.
        images_in_groups: images in those groups.
        dropped: ``(case_id, reason)`` for each row left out.
        notes: further remarks (e.g. groups kept despite conflicting labels).
        seconds: run time.
    """

    dataset: str
    out: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    duplicate_groups: int = 0
    images_in_groups: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def write(self, rows: list[dict[str, Any]], out: Path, t0: float, empty: str) -> "PrepareReport":
        """Write ``rows`` as the datalist ``out`` and fill ``out``, ``counts`` and ``seconds``.

        Args:
            t0: ``time.perf_counter()`` at the start of the preparation.
            empty: the error message when no row is left to write.
        """
        from ..datalist import write_datalist

        if not rows:
            raise ValueError(empty)
        write_datalist(rows, out)
        self.out, self.counts = out, label_counts(rows)
        self.seconds = time.perf_counter() - t0
        return self

    def count_groups(self, groups: Iterable[Hashable]) -> None:
        """``duplicate_groups`` and ``images_in_groups`` from one group key per row."""
        sizes = [n for n in Counter(groups).values() if n > 1]
        self.duplicate_groups, self.images_in_groups = len(sizes), sum(sizes)

    @property
    def n_rows(self) -> int:
        """Rows written."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """Human-readable multi-line summary (what the CLI prints)."""
        lines = [f"{self.dataset}: {self.n_rows} rows written to {self.out}"]
        lines.append("  per class: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())))
        lines.append(f"  groups with more than one row: {self.duplicate_groups} ({self.images_in_groups} rows in them)")
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)} rows:")
            reasons = Counter(r for _, r in self.dropped)
            for reason, count in reasons.most_common():
                ids = [c for c, r in self.dropped if r == reason]
                shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
                lines.append(f"    {count} x {reason}: {shown}")
        else:
            lines.append("  dropped: none")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(f"  time: {self.seconds:.1f} s")
        return "\n".join(lines)


def label_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per label."""
    return dict(Counter(str(r.get("label", "")) for r in rows))


# Imported after PrepareReport because the preparers build one.
from .busi import prepare_busi  # noqa: E402
from .folder import prepare_folder  # noqa: E402
from .mias import prepare_mias  # noqa: E402


def _run_busi(args: argparse.Namespace) -> int:
    from ..dedup import DedupConfig

    report = prepare_busi(
        args.root,
        args.out,
        include_normal=args.include_normal,
        keep_conflicts=args.keep_conflicts,
        config=DedupConfig(threshold=args.threshold, coarse_threshold=args.coarse_threshold),
    )
    print(report.summary())
    return 0


def _run_mias(args: argparse.Namespace) -> int:
    report = prepare_mias(
        args.root,
        args.out,
        mask_dir=args.mask_dir,
        shape=args.shape,
        keep_uncoordinated=args.keep_uncoordinated,
    )
    print(report.summary())
    return 0


def _run_folder(args: argparse.Namespace) -> int:
    report = prepare_folder(args.root, args.out, mask_suffix=args.mask_suffix)
    print(report.summary())
    return 0


def add_parser(subparsers: Any) -> None:
    """Add the ``prepare`` command and its dataset sub-commands to an argparse subparsers object."""
    from ..dedup import DedupConfig

    defaults = DedupConfig()
    p = subparsers.add_parser(
        "prepare",
        help="build a datalist from a dataset folder",
        description="Build a datalist (CSV or JSON by the suffix of --out, paths relative to it) "
        "from a public dataset layout, with groups that keep related rows together.",
    )
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    b = sub.add_parser(
        "busi",
        help="BUSI breast ultrasound (Dataset_BUSI_with_GT)",
        description="One row per BUSI image with the union of its masks. Exact and near-duplicate "
        "images (re-cropped, re-scaled, adjacent frames) share a group; a group holding "
        "conflicting labels is dropped unless --keep-conflicts.",
    )
    b.add_argument("root", type=Path, help="folder holding benign/, malignant/ (and normal/)")
    b.add_argument("--out", type=Path, required=True, help="datalist to write (.csv or .json)")
    b.add_argument("--include-normal", action="store_true", help="also list normal/ images (label 'normal')")
    b.add_argument(
        "--keep-conflicts",
        action="store_true",
        help="keep duplicate groups with conflicting labels, flagged in a 'conflict' column",
    )
    b.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help="block score (median/lower-quartile NCC of sub-blocks of the best match) at which "
        f"two images are copies (default {defaults.threshold}); lower merges more",
    )
    b.add_argument(
        "--coarse-threshold",
        type=float,
        default=defaults.coarse_threshold,
        help=f"shortlist NCC below which a pair is not verified (default {defaults.coarse_threshold})",
    )
    b.set_defaults(func=_run_busi)

    m = sub.add_parser(
        "mias",
        help="mini-MIAS mammograms (Info.txt)",
        description="One row per benign or malignant finding of Info.txt, with a circular (or box) "
        "mask written per finding; the left and right films of a patient share a group.",
    )
    m.add_argument("root", type=Path, help="folder holding Info.txt and mdbNNN.png")
    m.add_argument("--out", type=Path, required=True, help="datalist to write (.csv or .json)")
    m.add_argument("--mask-dir", type=Path, default=None, help="where to write masks (default: masks/ beside --out)")
    m.add_argument("--shape", choices=("circle", "box"), default="circle", help="mask shape (default circle)")
    m.add_argument(
        "--keep-uncoordinated",
        action="store_true",
        help="keep findings without coordinates, with an empty mask (= whole image)",
    )
    m.set_defaults(func=_run_mias)

    f = sub.add_parser(
        "folder",
        help="generic ROOT/<class>/... image folders",
        description="One row per image found recursively under ROOT/<class>/; label = class folder; "
        "files named <image><mask-suffix>[_N].<ext> are that image's masks.",
    )
    f.add_argument("root", type=Path, help="folder with one sub-folder per class")
    f.add_argument("--out", type=Path, required=True, help="datalist to write (.csv or .json)")
    f.add_argument("--mask-suffix", default="_mask", help="mask file name suffix (default _mask)")
    f.set_defaults(func=_run_folder)
