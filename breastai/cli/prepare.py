"""``breastai prepare``: public dataset layouts into a datalist (BUSI, mini-MIAS, one folder per class)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from breastai.data.prepare.busi import prepare_busi
from breastai.data.prepare.folder import prepare_folder
from breastai.data.prepare.mias import prepare_mias


def _run_busi(args: argparse.Namespace) -> int:
    from breastai.data.dedup import DedupConfig

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
    from breastai.data.dedup import DedupConfig

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
