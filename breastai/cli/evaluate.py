"""``breastai evaluate``: metrics, predictions and figures of a checkpoint on a labelled datalist."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai evaluate``."""
    e = subparsers.add_parser("evaluate", help="evaluate a checkpoint on a labelled datalist",
                              description="Evaluate a checkpoint: metrics.json (AUC with bootstrap CI, sensitivity and "
                              "specificity at the checkpoint's threshold, Brier, ECE), predictions.csv, roc.png, "
                              "calibration.png.")
    e.add_argument("--checkpoint", required=True, help="best.pt from a training run")
    e.add_argument("--data", required=True, help="labelled datalist CSV/JSON")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.set_defaults(func=run)
    return e


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the headline figures."""
    from breastai.engine.evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(args.checkpoint, args.data, args.out, device=args.device)
    print(
        f"n={rep['n']}  AUC {rep['auc']:.4f} (95% CI {rep['auc_ci_low']:.3f}-{rep['auc_ci_high']:.3f})  "
        f"sensitivity {rep['sensitivity']:.3f}  specificity {rep['specificity']:.3f}  ECE {rep['ece']:.3f}"
    )
    print(f"report: {args.out}/metrics.json, predictions.csv, roc.png, calibration.png")
    return 0
