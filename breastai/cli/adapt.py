"""``breastai adapt``: re-estimate a checkpoint's batch-norm statistics on unlabeled images of the user's site."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai adapt``."""
    from breastai.engine.adapt import MIN_IMAGES

    c = subparsers.add_parser(
        "adapt", help="re-estimate batch-norm statistics on unlabeled images of your own site",
        description="Site adaptation without labels (AdaBN): run a datalist of your site's images through the "
        "checkpoint's own preprocessing and replace its batch-norm running means and variances by theirs, then write "
        "a new checkpoint. No label is read and no learnt weight changes; the calibration and threshold are the "
        "source's, the out-of-distribution detector is refitted on these images. Takes a classifier, a segmenter "
        "(raw images suffice), an ensemble (each member) or a pipeline (raw images suffice: its segmenter first, then "
        "its lesion readers on the lesions the adapted segmenter outlines). The new checkpoint records how "
        f"many images, their digests and the source's digest. Needs at least {MIN_IMAGES} images, and a lesion mask "
        "per row for a model that crops the lesion outside a pipeline. Run breastai calibrate after it when labelled "
        "local cases exist.")
    c.add_argument("--checkpoint", required=True, help="best.pt of a classifier, segmenter, pipeline or ensemble to adapt")
    c.add_argument("--data", required=True, help="datalist CSV/JSON of local images; the label column may be "
                   "missing or empty")
    c.add_argument("--out", required=True, help="the new checkpoint file (never the source)")
    c.add_argument("--segmenter-only", action="store_true",
                   help="for a pipeline: adapt its segmenter alone and keep its classifier as it is (at a second "
                   "site this helped where adapting the whole pipeline did not; give lesion-free images in about "
                   "equal number: adapt counts the images where the segmenter finds a lesion and warns where "
                   "nearly all hold one)")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda")
    c.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")
    c.set_defaults(func=run)
    return c


def run(args: argparse.Namespace) -> int:
    """Adapt and print what was done and what was not."""
    import torch

    from breastai.engine.adapt import LESION_SHARE_BAND, MIN_DETECTOR_IMAGES, adapt_checkpoint, share_in_band

    if args.threads:
        torch.set_num_threads(args.threads)
    rec = adapt_checkpoint(args.checkpoint, args.data, args.out, device=args.device,
                           segmenter_only=args.segmenter_only)
    print(f"batch-norm statistics of {rec.layers} layers re-estimated on {rec.n} local images (no labels read)")
    if rec.skipped:
        print(f"{len(rec.skipped)} row(s) could not be read and were left out:")
        for why in rec.skipped:
            print(f"  {why}")
    if rec.lesion_share is not None:
        lo, hi = LESION_SHARE_BAND
        verdict = "within" if share_in_band(rec.lesion_share) else "OUTSIDE"
        print(f"the segmenter as trained finds a lesion in {rec.lesion_share:.0%} of these images: {verdict} "
              f"{lo:.0%}-{hi:.0%} (above: nearly all hold a lesion, and adapting on such images hurt at a second site)")
    if rec.ood_flagged_before is not None and rec.ood_flagged_after is None:
        print(f"out-of-distribution detector: the source's flags {rec.ood_flagged_before:.0%} of these images (unlike "
              f"its training site); too few images to refit it on (at least {MIN_DETECTOR_IMAGES}), so the adapted "
              "checkpoint has none: predict gives no ood flag with it")
    elif rec.ood_flagged_before is not None:
        print(f"out-of-distribution detector: the source's flags {rec.ood_flagged_before:.0%} of these images (unlike "
              f"its training site); refitted on them, it flags {rec.ood_flagged_after:.0%} and from now on flags what "
              "is unlike this site's images")
    then = ("the pipeline's classifier kept as it was; " if args.segmenter_only else "") + (
            "presence calibration and threshold unchanged" if rec.task == "segmentation" else
            "calibration and threshold unchanged: run breastai calibrate on it when labelled local cases exist")
    print(f"written: {args.out} (learnt weights unchanged, {rec.learnt_weights_digest[:19]}...; {then})")
    return 0
