"""The ``breastai`` command: prepare, train, evaluate, ensemble, predict, radiomics, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]

_EPILOG = "Run 'breastai COMMAND --help' for the options of a command."


def _setup_logging(verbose: bool = False) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout, force=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import main as train_main

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


def _print_train_result(out: dict) -> None:
    if "mean_sd" in out:
        ms = out["mean_sd"]
        print(f"cross-validation: AUC {ms['auc']['mean']:.4f} ± {ms['auc']['sd']:.4f} over {len(out['folds'])} folds; "
              f"sensitivity {ms['sensitivity']['mean']:.3f}, specificity {ms['specificity']['mean']:.3f}")
        print(f"summary: {out['run_dir']}/cv_summary.json")
    else:
        print(f"kept epoch {out['best_epoch'] + 1}: validation AUC {out['val_auc']:.4f}")
        if "test" in out:
            print(f"test AUC {out['test']['auc']:.4f} (95% CI {out['test']['auc_ci_low']:.3f}-{out['test']['auc_ci_high']:.3f})")
        print(f"checkpoint: {out['run_dir']}/best.pt   TensorBoard: tensorboard --logdir {out['run_dir']}/tb")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(args.checkpoint, args.data, args.out, device=args.device)
    print(
        f"n={rep['n']}  AUC {rep['auc']:.4f} (95% CI {rep['auc_ci_low']:.3f}-{rep['auc_ci_high']:.3f})  "
        f"sensitivity {rep['sensitivity']:.3f}  specificity {rep['specificity']:.3f}  ECE {rep['ece']:.3f}"
    )
    print(f"report: {args.out}/metrics.json, predictions.csv, roc.png, calibration.png")
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from .ensemble import build_ensemble

    out = build_ensemble(args.runs, args.out, combine=args.combine, device=args.device)
    ms = out["mean_sd"]
    print(f"ensemble ({args.combine}) of {len(args.runs)} runs: AUC {ms['auc']['mean']:.4f} ± {ms['auc']['sd']:.4f} over "
          f"{len(out['folds'])} folds, pooled {out['pooled_oof_auc']:.4f}; sensitivity {ms['sensitivity']['mean']:.3f}, "
          f"specificity {ms['specificity']['mean']:.3f}")
    print(f"summary: {args.out}/cv_summary.json   checkpoints: {args.out}/fold*/best.pt")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, n_per_class=args.n_per_class, device=args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-parser per command."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="breastai",
        description="Train, evaluate and run breast lesion malignancy classifiers on ultrasound and mammography.",
        epilog=_EPILOG,
    )
    p.add_argument("--version", action="version", version=f"breastai {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from .data.prepare import add_parser as add_prepare

    add_prepare(sub)

    t = sub.add_parser(
        "train",
        help="train a classifier from a YAML config (key=value overrides win)",
        description="Train a classifier. The YAML config sets the defaults, key=value overrides win, and the "
        "resolved config is saved in the run folder OUTPUT_DIR/RUN_NAME. Under torchrun, trains with DDP.",
        epilog="example: breastai train --config configs/busi.yaml train.epochs=5 preprocess.mode=crop",
    )
    t.add_argument("--config", help="YAML config file (defaults: breastai.config.DEFAULTS)")
    t.add_argument("--data", help="datalist CSV/JSON (same as data.datalist=FILE)")
    t.add_argument("--folds", type=int, help="K-fold group-aware cross-validation (same as train.folds=K)")
    t.add_argument("--resume", action="store_true", help="continue the run from its last.pt")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=3e-4")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a labelled datalist",
                       description="Evaluate a checkpoint: metrics.json (AUC with bootstrap CI, sensitivity and "
                       "specificity at the checkpoint's threshold, Brier, ECE), predictions.csv, roc.png, calibration.png.")
    e.add_argument("--checkpoint", required=True, help="best.pt from a training run")
    e.add_argument("--data", required=True, help="labelled datalist CSV/JSON")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.set_defaults(func=_cmd_evaluate)

    n = sub.add_parser(
        "ensemble", help="combine cross-validation runs trained on the same folds into one model",
        description="Combine CV runs (same datalist, seed and folds) fold by fold: the members' calibrated log-odds "
        "are added with weights fitted on each fold's validation part, never on its held-out part. Writes one "
        "self-contained ensemble checkpoint per fold (usable by predict and evaluate), cv_summary.json and "
        "oof_predictions.csv like 'breastai train --folds K'.",
        epilog="example: breastai ensemble checkpoints/busi_crop checkpoints/busi_whole --out checkpoints/busi_crop+whole")
    n.add_argument("runs", nargs="+", metavar="RUN", help="CV run folders (cv_summary.json, fold*/best.pt)")
    n.add_argument("--out", required=True, help="output folder")
    n.add_argument("--combine", default="mean", choices=["mean", "stack"],
                   help="mean: one shared weight (default); stack: one non-negative weight per member")
    n.add_argument("--device", default="auto", help="auto, cpu or cuda")
    n.set_defaults(func=_cmd_ensemble)

    try:
        from .predict_cli import add_parser as add_predict
    except ImportError:
        pass
    else:
        add_predict(sub)
    try:
        from .radiomics.cli import add_parser as add_radiomics
    except ImportError:
        pass
    else:
        add_radiomics(sub)

    d = sub.add_parser("demo", help="zero-data demo: synthetic lesions -> train -> evaluate, in minutes",
                       description="Write a small synthetic ultrasound lesion dataset (PNG images and masks), train "
                       "a classifier on it, evaluate it on a second synthetic set and print where everything is.")
    d.add_argument("--out", default="checkpoints/demo", help="output folder (default: checkpoints/demo)")
    d.add_argument("--epochs", type=int, default=6)
    d.add_argument("--n-per-class", type=int, default=80)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``breastai`` console command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options too (train --config C run_name=x --folds 5 a.b=1)
        if getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.parse_args(argv)  # reports the unrecognised arguments and exits 2
    _setup_logging(args.verbose)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.datalist import DatalistError
    from .data.io import ImageReadError

    from .data.transforms import root_cause

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DatalistError, ImageReadError, CheckpointError, OSError, ValueError, RuntimeError) as exc:
        if args.verbose:
            raise
        # MONAI datasets wrap a transform's error in RuntimeError("applying transform ..."): say the real one.
        print(f"breastai {args.command}: error: {root_cause(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
