"""Batch-norm statistics from the held-out site (AdaBN): does a model carry better with them?

For each leave-one-site-out run (``breastai train --folds sites``) and each fold, the fold's
``best.pt`` scores its held-out site twice: as trained, and with every batch-norm layer's running
statistics re-estimated on that site's images (:func:`breastai.engine.adapt.batchnorm_statistics`;
no labels read, the stored calibration kept). The held-out site is split at random into two
halves: statistics from one half score the other and the other way round, so no image is scored by
statistics that saw it. Printed per fold: AUC and 10-bin ECE both ways, and their means.

With ``--stats-from train`` (the control): the statistics come from the fold's own training part
(the training site, evaluation preset), the temperature is refitted on the validation part with
them, and the held-out site is scored once.

Usage::

    PYTHONPATH=. python benchmarks/adabn_cross_site.py checkpoints/xs_ema_s0 checkpoints/xs_ema_s1 [--out adabn.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.keys import Keys  # noqa: E402
from breastai.engine.adapt import adapted_checkpoint, batchnorm_statistics  # noqa: E402
from breastai.engine.cv import run_folds  # noqa: E402
from breastai.engine.scoring import predict_records  # noqa: E402
from breastai.models.calibration import calibrated_logit, fit_temperature  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.reporting.metrics import ece, roc_auc  # noqa: E402


def _probability(ckpt, records, device) -> np.ndarray:
    z = predict_records(ckpt, records, device)["logit"].astype(np.float64)
    return 1.0 / (1.0 + np.exp(-calibrated_logit(z, {"logit_offset": float(ckpt.logit_offset or 0.0),
                                                    "temperature": ckpt.temperature})))


def score_fold(ckpt_path: Path, held_out: list[dict], positive: str, seed: int) -> dict:
    """Held-out probabilities as trained and with cross-fitted batch-norm statistics."""
    device = torch.device("cpu")
    ckpt = load_checkpoint(ckpt_path)
    y = np.array([r[Keys.LABEL] == positive for r in held_out], dtype=np.int64)
    p0 = _probability(ckpt, held_out, device)
    half = np.random.default_rng(seed).permutation(len(held_out)) % 2
    p1 = np.empty_like(p0)
    for h in (0, 1):
        fit = [r for r, k in zip(held_out, half) if k != h]
        score = np.flatnonzero(half == h)
        adapted = adapted_checkpoint(ckpt, batchnorm_statistics(ckpt, fit, device))
        p1[score] = _probability(adapted, [held_out[i] for i in score], device)
    return {"y": y, "as trained": p0, "adabn": p1}


def score_fold_train_stats(ckpt_path: Path, train: list[dict], val: list[dict], held_out: list[dict],
                           positive: str) -> dict:
    """Held-out probabilities as trained and with clean training-site statistics (temperature refitted)."""
    device = torch.device("cpu")
    ckpt = load_checkpoint(ckpt_path)
    y = np.array([r[Keys.LABEL] == positive for r in held_out], dtype=np.int64)
    p0 = _probability(ckpt, held_out, device)
    adapted = adapted_checkpoint(ckpt, batchnorm_statistics(ckpt, train, device))
    off = float(ckpt.logit_offset or 0.0)
    yv = np.array([r[Keys.LABEL] == positive for r in val], dtype=np.int64)
    zv = predict_records(adapted, val, device)["logit"].astype(np.float64)
    t = fit_temperature(zv - off, yv, targets=ckpt.config["eval"]["calibration_targets"])
    z = predict_records(adapted, held_out, device)["logit"].astype(np.float64)
    return {"y": y, "as trained": p0, "adabn": 1.0 / (1.0 + np.exp(-(z - off) / t)), "T": (ckpt.temperature, t)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="leave-one-site-out run folders")
    ap.add_argument("--seed", type=int, default=0, help="the random halving of the held-out site")
    ap.add_argument("--stats-from", choices=("heldout", "train"), default="heldout")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        for i, fold_dir, records, (tr, va, test_idx), cfg in run_folds(run, "sites"):
            held_out = [records[j] for j in test_idx]
            if args.stats_from == "train":
                s = score_fold_train_stats(fold_dir / "best.pt", [records[j] for j in tr],
                                           [records[j] for j in va], held_out, cfg["data"]["classes"][1])
            else:
                s = score_fold(fold_dir / "best.pt", held_out, cfg["data"]["classes"][1], args.seed)
            row = {"run": run.name, "held_out": held_out[0].get(Keys.SITE, ""), "n": len(s["y"])}
            for m in ("as trained", "adabn"):
                row[f"auc {m}"] = roc_auc(s["y"], s[m])
                row[f"ece {m}"] = ece(s["y"], s[m])
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = ["run", "held_out", "n", "auc as trained", "auc adabn", "ece as trained", "ece adabn"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    means = {c: float(np.mean([r[c] for r in rows])) for c in cols[3:]}
    print("| mean | | | " + " | ".join(f"{means[c]:.4f}" for c in cols[3:]) + " |")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "means": means}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
