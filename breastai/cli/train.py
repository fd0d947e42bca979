"""``breastai train``: train or cross-validate a classifier from a YAML config and overrides."""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_parser", "run", "print_per_site"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai train``."""
    t = subparsers.add_parser(
        "train",
        help="train a classifier from a YAML config (key=value overrides win)",
        description="Train a classifier. The YAML config sets the defaults, key=value overrides win, and the "
        "resolved config is saved in the run folder OUTPUT_DIR/RUN_NAME. Under torchrun, trains with DDP.",
        epilog="example: breastai train --config configs/busi.yaml train.epochs=5 preprocess.mode=crop",
    )
    t.add_argument("--config", help="YAML config file (defaults: breastai.core.config.DEFAULTS)")
    t.add_argument("--data", help="datalist CSV/JSON (same as data.datalist=FILE)")
    t.add_argument("--folds", type=_folds, metavar="K|sites",
                   help="K-fold group-aware cross-validation (same as train.folds=K); 'sites': one fold per "
                   "datalist site, each held out in turn (leave-one-site-out)")
    t.add_argument("--resume", action="store_true", help="continue the run from its last.pt")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=3e-4")
    t.set_defaults(func=run)
    return t


def _folds(text: str) -> int | str:
    """``--folds``: a whole number or the word ``sites``."""
    if text.strip().lower() == "sites":
        return "sites"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or 'sites', got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Resolve the config, train, print where the results are."""
    from breastai.core.config import load_config
    from breastai.engine.run import main as train_main

    overrides = list(args.overrides)
    if args.folds is not None:
        overrides.append(f"train.folds={args.folds}")
    if args.data is not None:
        overrides.append(f"data.datalist={args.data}")
    cfg = load_config(args.config, overrides)
    out = train_main(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_train_result(out)
    return 0


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _seg_line(s: dict) -> str:
    """One line of a segmenter's summary (:func:`breastai.reporting.segmentation.segmentation_summary`)."""
    return (f"Dice mean {_fmt(s['dice_mean'])} (median {_fmt(s['dice_median'])}), HD95 median {_fmt(s['hd95_median'], '.1f')} px, "
            f"missed {s['missed']}/{s['n_lesion']} lesion images, presence AUC {_fmt(s['presence_auc'])}, "
            f"false lesions on {_fmt(s['false_lesion_rate'])} of {s['n_normal']} normal images")


def print_per_site(out: dict) -> None:
    """One line per site of a classifier's CV summary (mixed-site data): n, pooled AUC, ECE."""
    for site, m in out.get("per_site", {}).items():
        auc = "undefined (one class)" if m["auc"] is None else f"{m['auc']:.4f}"
        print(f"  site {site}: n {m['n']}, pooled out-of-fold AUC {auc}, ECE {m['ece']:.3f}")


def _print_train_result(out: dict) -> None:
    if out.get("task") == "segmentation":  # a segmenter's cross-validation
        print(f"cross-validation over {len(out['folds'])} folds, all held-out images: {_seg_line(out['pooled'])}")
        for site, m in out.get("per_site", {}).items():
            print(f"  site {site}: {_seg_line(m)}")
        print(f"summary: {out['run_dir']}/cv_summary.json")
    elif "dice_mean" in out.get("val", {}):  # a segmenter's single split
        print(f"kept epoch {out['best_epoch'] + 1}: validation {_seg_line(out['val'])}")
        if "test" in out:
            print(f"test: {_seg_line(out['test'])}")
        print(f"checkpoint: {out['run_dir']}/best.pt   TensorBoard: tensorboard --logdir {out['run_dir']}/tb")
    elif "mean_sd" in out:
        ms = out["mean_sd"]
        print(f"cross-validation: AUC {ms['auc']['mean']:.4f} ± {ms['auc']['sd']:.4f} over {len(out['folds'])} folds; "
              f"sensitivity {ms['sensitivity']['mean']:.3f}, specificity {ms['specificity']['mean']:.3f}")
        print_per_site(out)
        print(f"summary: {out['run_dir']}/cv_summary.json")
    else:
        print(f"kept epoch {out['best_epoch'] + 1}: validation AUC {out['val_auc']:.4f}")
        if "test" in out:
            print(f"test AUC {out['test']['auc']:.4f} (95% CI {out['test']['auc_ci_low']:.3f}-{out['test']['auc_ci_high']:.3f})")
        print(f"checkpoint: {out['run_dir']}/best.pt   TensorBoard: tensorboard --logdir {out['run_dir']}/tb")
