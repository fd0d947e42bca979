"""Wall time of one cross-validation fold of a training config, run alone.

Trains exactly what ``breastai train --config C --folds K`` trains for fold ``--fold`` (same
split, same code path: :func:`breastai.engine.trainer.fit`) into a temporary folder and prints the
fold's wall time (data caching, epochs, calibration, held-out scoring) and the median time per
epoch (training plus validation). Run it with nothing else on the machine: the fold times in a CV run's
``cv_summary.json`` are only comparable when the runs did not share the cores.

    python benchmarks/bench_train.py --config configs/busi.yaml [--fold 0] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.config import load_config  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.engine.cv import cv_splits  # noqa: E402
from breastai.engine.trainer import fit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, ["log.progress=false", *args.overrides])  # trains what `breastai train` would
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    records = read_samples(cfg["data"]["datalist"], cfg["data"])
    tr, va, te = cv_splits(records, args.folds, cfg)[args.fold]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = fit(cfg, records, {"train": tr, "val": va, "test": te}, Path(tmp) / "fold")
        wall = time.perf_counter() - t0
    seconds = res["epoch_seconds"]
    per_epoch = round(statistics.median(seconds), 1) if seconds else float("nan")
    report = {
        "config": args.config, "overrides": args.overrides, "fold": args.fold, "threads": torch.get_num_threads(),
        "n_train": len(tr), "n_val": len(va), "n_test": len(te), "epochs_run": len(seconds),
        "fold_seconds": round(wall, 1), "median_epoch_seconds": per_epoch,
        "best_epoch": res["best_epoch"], "test_auc": res["test"]["auc"],
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
