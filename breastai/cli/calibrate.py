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
        "about 50 or more are advised (docs/results.md).")
    c.add_argument("--checkpoint", required=True, help="best.pt (or an ensemble's checkpoint) to recalibrate")
    c.add_argument("--data", required=True, help="labelled datalist CSV/JSON of local cases")
    c.add_argument("--out", required=True, help="the new checkpoint file (never the source)")
    c.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"temperature: rescale the log-odds; platt: rescale and shift them (default {DEFAULT_METHOD})")
    c.add_argument("--threshold-method", default=None,
                   help="youden, closest, sensitivity@X, specificity@X on the refitted probabilities, or "
                   f"'{KEEP}' (the old operating point through the new calibration); default: the checkpoint's "
                   "eval.threshold_method, as in training")
    c.add_argument("--targets", choices=CHOICES["eval.calibration_targets"], default=None,
                   help="fit targets (default: the checkpoint's eval.calibration_targets)")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda")
    c.set_defaults(func=run)
    return c


def run(args: argparse.Namespace) -> int:
    """Recalibrate and print what moved."""
    from breastai.engine.recalibrate import recalibrate_checkpoint

    rec = recalibrate_checkpoint(args.checkpoint, args.data, args.out, method=args.method,
                                 threshold_method=args.threshold_method, targets=args.targets, device=args.device)
    per_class = ", ".join(f"{n} {c}" for c, n in rec.n_per_class.items())
    moved = "  ".join(f"{k} {rec.before[k] if not isinstance(rec.before[k], float) else f'{rec.before[k]:.4g}'} -> "
                      f"{rec.after[k] if not isinstance(rec.after[k], float) else f'{rec.after[k]:.4g}'}"
                      for k in rec.after)
    print(f"{rec.method} recalibration on {rec.n} local cases ({per_class}): slope {rec.slope:.4g}, "
          f"intercept {rec.intercept:.4g}")
    print(f"{moved}  threshold {rec.threshold_before:.4g} -> {rec.threshold_after:.4g} ({rec.threshold_method})")
    print(f"local sample (in-sample, optimistic): ECE {rec.metrics['ece_before']:.3f} -> {rec.metrics['ece_after']:.3f}")
    print(f"written: {args.out} (weights unchanged, {rec.weights_digest[:19]}...); check it with breastai evaluate "
          "on other local cases")
    return 0
