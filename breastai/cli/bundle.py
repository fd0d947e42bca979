"""``breastai bundle``: a classifier and a segmenter in one self-contained pipeline checkpoint."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai bundle``."""
    b = subparsers.add_parser(
        "bundle", help="put a classifier and a segmenter into one pipeline checkpoint",
        description="Write one pipeline checkpoint: the classifier's (a model's or an ensemble's) with the "
        "segmenter's whole checkpoint inside it, so one file is all there is to hand around. Nothing is refitted: "
        "each part keeps its weights, calibration and thresholds, and one digest covers both. The file loads as "
        "the classifier carrying its segmenter.",
        epilog="example: breastai bundle --classifier runs/busi/best.pt --segmenter runs/busi_seg/best.pt "
        "--out pipeline.pt")
    b.add_argument("--classifier", required=True, help="the classifier's checkpoint (best.pt, or an ensemble's)")
    b.add_argument("--segmenter", required=True, help="the segmenter's checkpoint (best.pt of a segmentation run)")
    b.add_argument("--out", required=True, help="the pipeline checkpoint file to write (never one of the two)")
    b.add_argument("--replace", action="store_true",
                   help="swap the segmenter a pipeline given as --classifier already carries")
    b.set_defaults(func=run)
    return b


def run(args: argparse.Namespace) -> int:
    """Bundle the two checkpoints and say what went in."""
    from breastai.engine.bundle import bundle_files
    from breastai.models.checkpoint import model_names

    pipe = bundle_files(args.classifier, args.segmenter, args.out, replace=args.replace)
    seg = pipe.segmenter
    print(f"pipeline: classifier {model_names(pipe)} (threshold {pipe.threshold:.3g}) + segmenter {model_names(seg)} "
          f"(lesion presence threshold {seg.threshold:.3g})")
    print(f"written: {args.out}")
    return 0
