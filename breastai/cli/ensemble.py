"""``breastai ensemble``: combine runs trained on the same folds (or the same validation part) into one model."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai ensemble``."""
    n = subparsers.add_parser(
        "ensemble", help="combine runs trained on the same folds (or validation part) into one model",
        description="Combine CV runs (same datalist, split seed and folds) fold by fold: the members' calibrated "
        "log-odds are added with weights fitted on each fold's validation part, never on its held-out part. Writes "
        "one self-contained ensemble checkpoint per fold (usable by predict and evaluate), cv_summary.json and "
        "oof_predictions.csv like 'breastai train --folds K'. Single-split runs that share their validation part "
        "(seed=1 data.split_seed=0 beside seed=0: a seed ensemble) give one best.pt and summary.json. Segmenter "
        "runs (or their checkpoint files; a CV run gives all its folds) are averaged into one segmenter best.pt: "
        "mask and presence probabilities, presence threshold the members' median, or, for seeds sharing their "
        "validation part, chosen there (--threshold-from).",
        epilog="examples: breastai ensemble checkpoints/busi_crop checkpoints/busi_whole --out checkpoints/busi_crop+whole; "
        "the no-reader pipeline: breastai ensemble checkpoints/busi_auto checkpoints/busi_whole --segmenter-run "
        "checkpoints/busi_seg_cv --out checkpoints/busi_auto_whole")
    n.add_argument("runs", nargs="+", metavar="RUN", help="CV run folders (cv_summary.json, fold*/best.pt) or single-split run "
                   "folders (best.pt, summary.json); for segmenters also checkpoint files")
    n.add_argument("--out", required=True, help="output folder")
    n.add_argument("--combine", default="mean", choices=["mean", "stack"],
                   help="mean: one shared weight (default); stack: one non-negative weight per member")
    n.add_argument("--segmenter-run", metavar="SEG_RUN",
                   help="a segmenter's CV run: fit the combination on automatic outlines (each validation image "
                   "outlined by the segmenter fold that held it out). CV runs on the same folds: each fold is written "
                   "as a pipeline carrying its segmenter, its held-out fold scored as 'evaluate --auto-outline' scores "
                   "it. Single-split runs: one pipeline carrying the segmenter run's folds averaged (recommended "
                   "behind a lesion crop and a whole-image model)")
    n.add_argument("--threshold-from", metavar="DATALIST",
                   help="segmenters only: the datalist the members were trained on, when they share their validation "
                   "part (seeds of one split: seed=1 data.split_seed=0 beside seed=0); the ensemble's presence "
                   "threshold is chosen on that part by the training rule (seg.presence_sensitivity of its lesion "
                   "images keep a found lesion) instead of the members' median")
    n.add_argument("--device", default="auto", help="auto, cpu or cuda")
    n.set_defaults(func=run)
    return n


def _segmenters(runs: list[str]) -> bool:
    """Whether the runs are segmenters' (their first checkpoint says); refuses a mixture."""
    from breastai.engine.seg_ensemble import segmenter_checkpoints
    from breastai.models.checkpoint import CheckpointError, is_segmenter
    from breastai.models.checkpoint_io import load_checkpoint

    kinds = {is_segmenter(load_checkpoint(segmenter_checkpoints(r)[0])) for r in runs}
    if len(kinds) > 1:
        raise CheckpointError("the runs mix segmenters and classifiers: an ensemble is of one kind")
    return kinds == {True}


def _segmenter_ensemble(args: argparse.Namespace) -> int:
    from breastai.engine.seg_ensemble import build_segmenter_ensemble

    s = build_segmenter_ensemble(args.runs, args.out, threshold_from=args.threshold_from, device=args.device)
    members = ", ".join(f"{t:.3g}" for t in s["member_thresholds"])
    v = s["threshold_chosen_on"]
    if v is None:
        where = f"median of the members' {members}"
    else:
        false = f", {v['false_lesions']:.0%} of the others given a lesion" if v["false_lesions"] is not None else ""
        where = (f"chosen on the members' shared validation part: {v['images']} images of {args.threshold_from}, "
                 f"{v['found']:.0%} of its {v['lesion_images']} lesion images found{false}; the members' own {members}")
    print(f"segmenter ensemble of {len(s['members'])}: mask and presence probabilities averaged; presence threshold "
          f"{s['threshold']:.3g} ({where})")
    if v is None and s["shared_validation_datalist"]:
        print(f"note: these members validated on the same images (seeds of one split): add --threshold-from "
              f"{s['shared_validation_datalist']} (the datalist they trained on) to choose the ensemble's own threshold "
              "there; the median of thresholds chosen for single members misses lesions the ensemble would find")
    print(f"summary: {args.out}/summary.json   checkpoint: {args.out}/best.pt (give it as --segmenter, or bundle it)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Build the ensemble and print its cross-validated figures (a segmenter ensemble: its members and threshold)."""
    from breastai.cli.train import print_per_site
    from breastai.engine.ensemble import build_ensemble
    from breastai.engine.ensemble_outlines import OutlineFit

    if _segmenters(args.runs):
        if args.combine != "mean" or args.segmenter_run:
            raise ValueError("segmenters are averaged (mask and presence probabilities): --combine stack and "
                             "--segmenter-run are for classifiers")
        return _segmenter_ensemble(args)
    if args.threshold_from:
        raise ValueError("--threshold-from is for segmenter ensembles: a classifier ensemble's threshold is chosen on "
                         "its members' validation parts already")
    out = build_ensemble(args.runs, args.out, combine=args.combine, device=args.device,
                         on_outlines=OutlineFit(args.segmenter_run) if args.segmenter_run else None)
    if "fitted_on" in out:  # single-split runs fitted on automatic outlines: one pipeline
        test = out.get("test")
        print(f"ensemble ({args.combine}) of {len(args.runs)} runs: weights {[round(w, 3) for w in out['weights']]}, "
              f"fitted on automatic outlines from {args.segmenter_run} ({out['n_val_fitted']} validation images with a "
              f"lesion found, {out['n_val_no_lesion_found']} without); validation AUC {out['val_auc']:.4f}"
              + (f"; test AUC {test['auc']:.4f}, ECE {test['ece']:.3f} (each test image outlined by the fold that "
                 "held it out)" if test else ""))
        print(f"a pipeline carrying the segmenter run's {len(out['segmenter'])} folds averaged: {args.out}/best.pt "
              f"(predict it with no outline); summary: {args.out}/summary.json")
        return 0
    if "mean_sd" not in out:  # single-split runs: one checkpoint
        test = out.get("test")
        print(f"ensemble ({args.combine}) of {len(args.runs)} runs: weights {[round(w, 3) for w in out['weights']]}, "
              f"validation AUC {out['val_auc']:.4f}" + (f"; test AUC {test['auc']:.4f} (members "
              f"{', '.join(f'{a:.4f}' for a in out['member_test_auc'])}), ECE {test['ece']:.3f}" if test else ""))
        print(f"summary: {args.out}/summary.json   checkpoint: {args.out}/best.pt")
        return 0
    ms = out["mean_sd"]
    print(f"ensemble ({args.combine}) of {len(args.runs)} runs: AUC {ms['auc']['mean']:.4f} ± {ms['auc']['sd']:.4f} "
          f"over {len(out['folds'])} folds, pooled {out['pooled_oof_auc']:.4f}; sensitivity "
          f"{ms['sensitivity']['mean']:.3f}, specificity {ms['specificity']['mean']:.3f}")
    print_per_site(out)
    if args.segmenter_run:
        print(f"fitted on automatic outlines from {args.segmenter_run}; each fold's checkpoint is a pipeline")
    print(f"summary: {args.out}/cv_summary.json   checkpoints: {args.out}/fold*/best.pt")
    return 0
