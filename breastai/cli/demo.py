"""``breastai demo``: the whole path on built-in synthetic data, no download, a few minutes on a CPU.

1. writes a synthetic ultrasound lesion dataset (PNG images + masks + datalist) for training,
   and a second one from another seed as an independent test set;
2. trains the default model on the first (group-aware train/validation split);
3. evaluates the best checkpoint on the second and writes the report.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from breastai.core.config import load_config
from breastai.data.synthetic import make_demo_dataset
from breastai.engine.evaluate import evaluate_checkpoint
from breastai.engine.run import main as train_main

__all__ = ["add_parser", "run", "run_demo", "demo_config"]

log = logging.getLogger("breastai")


def demo_config(datalist: Path, out_dir: Path, epochs: int, device: str) -> dict[str, Any]:
    """The demo's training configuration: the real-data defaults, scaled down for a 2-core CPU."""
    return load_config(
        None,
        [
            f"data.datalist={datalist}",
            f"output_dir={out_dir}",
            "run_name=run",
            f"device={device}",
            "preprocess.mode=crop",
            "preprocess.size=128",
            f"train.epochs={epochs}",
            "train.batch_size=32",
            "train.lr=2e-3",
            "train.warmup_epochs=1",
            "train.early_stop_patience=100",
            "log.image_grid=16",
        ],
    )


def run_demo(out: str | Path = "checkpoints/demo", epochs: int = 6, n_per_class: int = 80, device: str = "auto") -> dict[str, Any]:
    """Run the demo end to end; returns the evaluation metrics and the paths written."""
    out = Path(out)
    t0 = time.time()
    train_list = make_demo_dataset(out / "data_train", n_per_class=n_per_class, size=160, seed=0)
    test_list = make_demo_dataset(out / "data_test", n_per_class=max(20, n_per_class // 2), size=160, seed=1)
    log.info("demo data: %s (training) and %s (independent test set)", train_list, test_list)
    result = train_main(demo_config(train_list, out, epochs, device))
    run_dir = Path(result["run_dir"])
    report = evaluate_checkpoint(run_dir / "best.pt", test_list, run_dir / "eval_test", device=device)
    print()
    print(f"demo finished in {time.time() - t0:.0f} s")
    print(f"  validation AUC (best epoch {result['best_epoch'] + 1}): {result['val_auc']:.3f}")
    print(f"  independent synthetic test set: AUC {report['auc']:.3f} (95% CI {report['auc_ci_low']:.3f}-"
          f"{report['auc_ci_high']:.3f}), sensitivity {report['sensitivity']:.3f}, specificity {report['specificity']:.3f}")
    print(f"  checkpoint:   {run_dir / 'best.pt'}")
    print(f"  config:       {run_dir / 'config.yaml'}")
    print(f"  report:       {run_dir / 'eval_test'} (metrics.json, predictions.csv, roc.png, calibration.png)")
    print(f"  TensorBoard:  tensorboard --logdir {run_dir / 'tb'}")
    return {"report": report, "run_dir": str(run_dir), "train": result}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai demo``."""
    d = subparsers.add_parser("demo", help="zero-data demo: synthetic lesions -> train -> evaluate, in minutes",
                              description="Write a small synthetic ultrasound lesion dataset (PNG images and masks), "
                              "train a classifier on it, evaluate it on a second synthetic set and print where "
                              "everything is.")
    d.add_argument("--out", default="checkpoints/demo", help="output folder (default: checkpoints/demo)")
    d.add_argument("--epochs", type=int, default=6)
    d.add_argument("--n-per-class", type=int, default=80)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=run)
    return d


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments."""
    run_demo(args.out, epochs=args.epochs, n_per_class=args.n_per_class, device=args.device)
    return 0
