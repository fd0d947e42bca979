"""``breastai calibrate``: refit a checkpoint's calibration and threshold on labelled cases of the user's site."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai calibrate``."""
    from breastai.core.config import CHOICES
    from breastai.engine.recalibrate import DEFAULT_METHOD, KEEP, METHODS, MIN_PER_CLASS

    c = subparsers.add_parser(
        "calibrate", help="refit calibration and threshold on a labelled sample of your own site",
        description="Local recalibration: score a small labelled datalist of your site with the checkpoint, refit "
        "its calibration (temperature, or slope and intercept of the log-odds) and its operating threshold, and "
        "write a new checkpoint. The model's weights are not changed; the new checkpoint records what was refitted, "
        f"on how many cases and the digests of their images. Needs at least {MIN_PER_CLASS} cases of each class; "
        "about 50 or more are advised (docs/results.md). Given a segmenter, it re-chooses the lesion-presence "
        "threshold instead, on local images with their traced masks (an empty mask for an image without a lesion), "
        "by the training rule: the highest threshold that keeps --lesion-sensitivity of the local lesion images "
        "found. Given a pipeline checkpoint (a classifier carrying its segmenter), the local images are scored as "
        "the pipeline scores a new exam: outlined by its segmenter (their traced masks unused; an image with no lesion "
        "found scored by the whole-image members, if any).")
    c.add_argument("--checkpoint", required=True, help="best.pt (or an ensemble's checkpoint) to recalibrate")
    c.add_argument("--data", required=True, help="labelled datalist CSV/JSON of local cases")
    c.add_argument("--out", required=True, help="the new checkpoint file (never the source)")
    c.add_argument("--method", choices=METHODS, default=None,
                   help=f"temperature: rescale the log-odds; platt: rescale and shift them (default {DEFAULT_METHOD})")
    c.add_argument("--threshold-method", default=None,
                   help="youden, closest, sensitivity@X, specificity@X on the refitted probabilities, or "
                   f"'{KEEP}' (the old operating point through the new calibration); default: the checkpoint's "
                   "eval.threshold_method, as in training")
    c.add_argument("--targets", choices=CHOICES["eval.calibration_targets"], default=None,
                   help="fit targets (default: the checkpoint's eval.calibration_targets)")
    c.add_argument("--lesion-sensitivity", type=float, default=None, metavar="Q",
                   help="a segmenter only: the fraction of local lesion images that must keep a found lesion (default: "
                   "the segmenter's seg.presence_sensitivity, 0.95 in configs/busi_seg.yaml); lower finds fewer false "
                   "lesions and misses more")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda")
    c.set_defaults(func=run)
    return c


def run(args: argparse.Namespace) -> int:
    """Recalibrate and print what moved."""
    from breastai.engine.recalibrate import DEFAULT_METHOD, recalibrate_checkpoint
    from breastai.models.checkpoint import is_segmenter
    from breastai.models.checkpoint_io import load_checkpoint

    source = load_checkpoint(args.checkpoint)
    if is_segmenter(source):
        return _segmenter(args)
    if args.lesion_sensitivity is not None:
        raise ValueError(f"{args.checkpoint}: --lesion-sensitivity is for a segmenter; this is a classifier")
    rec = recalibrate_checkpoint(args.checkpoint, args.data, args.out, method=args.method or DEFAULT_METHOD,
                                 threshold_method=args.threshold_method, targets=args.targets, device=args.device)
    per_class = ", ".join(f"{n} {c}" for c, n in rec.n_per_class.items())
    moved = "  ".join(f"{k} {rec.before[k] if not isinstance(rec.before[k], float) else f'{rec.before[k]:.4g}'} -> "
                      f"{rec.after[k] if not isinstance(rec.after[k], float) else f'{rec.after[k]:.4g}'}"
                      for k in rec.after)
    print(f"{rec.method} recalibration on {rec.n} local cases ({per_class}): slope {rec.slope:.4g}, "
          f"intercept {rec.intercept:.4g}")
    if source.is_pipeline:
        print("scored as the pipeline scores a new exam: outlined by its segmenter (an image with no lesion found "
              "by its whole-image members, whose scores the new calibration maps too)")
    print(f"{moved}  threshold {rec.threshold_before:.4g} -> {rec.threshold_after:.4g} ({rec.threshold_method})")
    print(f"local sample (in-sample, optimistic): ECE {rec.metrics['ece_before']:.3f} -> {rec.metrics['ece_after']:.3f}")
    print(f"written: {args.out} (weights unchanged, {rec.weights_digest[:19]}...); check it with breastai evaluate "
          "on other local cases")
    return 0


def _segmenter(args: argparse.Namespace) -> int:
    """Re-choose a segmenter's presence threshold on local traced images and print what moved."""
    from breastai.engine.seg_recalibrate import rethreshold_segmenter

    given = [f"--{k.replace('_', '-')}" for k in ("method", "threshold_method", "targets") if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{args.checkpoint}: a segmenter's presence is recalibrated by its threshold alone; "
                         f"{', '.join(given)} applies to classifiers (use --lesion-sensitivity)")
    rec = rethreshold_segmenter(args.checkpoint, args.data, args.out, sensitivity=args.lesion_sensitivity,
                                device=args.device)
    m = rec.metrics
    free = f", images without a lesion given one {m['false_lesions_before']:.2f} -> {m['false_lesions_after']:.2f}" \
        if rec.n_per_class["no lesion"] else " (no image without a lesion: false lesions not measured)"
    print(f"presence threshold on {rec.n} local images ({rec.n_per_class['lesion']} with a lesion, "
          f"{rec.n_per_class['no lesion']} without): {rec.threshold_before:.4g} -> {rec.threshold_after:.4g} "
          f"({rec.threshold_method})")
    print(f"local images (in-sample, optimistic): lesion images found {m['found_before']:.2f} -> {m['found_after']:.2f}"
          f"{free}")
    print(f"written: {args.out} (weights unchanged, {rec.weights_digest[:19]}...); check it with breastai evaluate "
          "--segmenter on other local images")
    return 0
