"""Calibration on held-out folds of a cross-validation run, refitted with the current code.

For each fold: the fold's ``best.pt`` predicts its validation part (carved exactly as in
training) and its held-out part; the class-weighting offset log(w) (w = negatives/positives of
the fold's training part) and the temperature are fitted on validation only; the held-out ECE
is reported raw, with temperature only, and with offset + temperature, per fold and pooled over
all held-out cases, next to the ECE a perfectly calibrated model would show at that sample size
(:func:`breastai.reporting.metrics.ece_noise_floor`).

Usage::

    PYTHONPATH=. python benchmarks/calibration_cv.py --cv-run checkpoints/busi_crop_cv [--targets platt|hard] [--out calib.json]

``--targets`` picks the temperature fit's targets (:func:`breastai.models.calibration.fit_temperature`);
``saturated`` counts held-out probabilities that are exactly 0 or 1 in float64.
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

from breastai.models.calibration import TARGETS, apply_temperature, fit_temperature  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.reporting.metrics import ece, ece_noise_floor, summarise_folds  # noqa: E402
from breastai.engine.cv import cv_splits, load_cv_summary  # noqa: E402
from breastai.engine.scoring import predict_records

VARIANTS = ("ece_raw", "ece_temperature_only", "ece_offset_temperature")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cv-run", required=True, type=Path)
    ap.add_argument("--targets", choices=TARGETS, default="hard", help="targets of the temperature fit (default hard)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_cv_summary(args.cv_run)["config"]
    records = read_samples(cfg["data"]["datalist"], cfg["data"])
    rows, pooled = [], {"y": [], **{k: [] for k in VARIANTS}}
    for i, (tr, va, test_idx) in enumerate(cv_splits(records, int(cfg["train"]["folds"]), cfg)):
        state = load_checkpoint(args.cv_run / f"fold{i}" / "best.pt")
        y_tr = np.array([records[j]["label"] == cfg["data"]["classes"][1] for j in tr])
        offset = float(np.log((~y_tr).sum() / y_tr.sum())) if cfg["train"]["class_balance"] != "none" else 0.0

        def logits(idx):
            p = predict_records(state, [records[j] for j in idx], torch.device("cpu"))
            return p["logit"], p["label"]

        zv, yv = logits(va)
        zt, yt = logits(test_idx)
        t_only = fit_temperature(zv, yv, targets=args.targets)
        t_off = fit_temperature(zv - offset, yv, targets=args.targets)
        probs = {"ece_raw": apply_temperature(zt, 1.0), "ece_temperature_only": apply_temperature(zt, t_only),
                 "ece_offset_temperature": apply_temperature(zt - offset, t_off)}
        row = {"fold": i, "offset": offset, "temperature": t_off, **{k: ece(yt, p) for k, p in probs.items()},
               "ece_floor_mean": ece_noise_floor(probs["ece_offset_temperature"])["mean"],
               "saturated": int(np.isin(probs["ece_offset_temperature"], (0.0, 1.0)).sum())}
        rows.append(row)
        pooled["y"].extend(yt.tolist())
        for k, p in probs.items():
            pooled[k].extend(np.asarray(p).tolist())
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    summary = summarise_folds([{k: v for k, v in r.items() if k != "fold"} for r in rows])
    y = np.asarray(pooled["y"])
    pooled_ece = {k: ece(y, np.asarray(pooled[k])) for k in VARIANTS}
    floor = ece_noise_floor(np.asarray(pooled["ece_offset_temperature"]))
    print(f"{'':24s} {'per fold (mean ± sd)':>22s} {'pooled':>8s}")
    for k in VARIANTS:
        print(f"{k:24s} {summary[k]['mean']:>12.4f} ± {summary[k]['sd']:.4f} {pooled_ece[k]:>8.4f}")
    print(f"{'perfectly calibrated':24s} {summary['ece_floor_mean']['mean']:>12.4f}          {floor['mean']:>8.4f}"
          f"  (95th percentile pooled {floor['q95']:.4f}, n = {floor['n']})")
    if args.out:
        args.out.write_text(json.dumps({"folds": rows, "mean_sd": summary, "pooled": pooled_ece,
                                        "pooled_floor": floor}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
