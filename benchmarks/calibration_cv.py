"""Calibration on held-out folds of a cross-validation run, refitted with the current code.

For each fold: the fold's ``best.pt`` predicts its validation part (carved exactly as in
training) and its held-out part; the class-weighting offset log(w) (w = negatives/positives of
the fold's training part) and the temperature are fitted on validation only; the held-out ECE
is reported raw, with temperature only, and with offset + temperature.

Usage::

    PYTHONPATH=. python benchmarks/calibration_cv.py --cv-run checkpoints/busi_crop_cv [--out calib.json]
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

from breastai.calibration import apply_temperature, fit_temperature  # noqa: E402
from breastai.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from breastai.data.datalist import read_datalist  # noqa: E402
from breastai.data.splits import carve_validation, group_kfold  # noqa: E402
from breastai.engine import predict_loader  # noqa: E402
from breastai.metrics import ece, summarise_folds  # noqa: E402
from breastai.training import _loader, build_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cv-run", required=True, type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = json.loads((args.cv_run / "cv_summary.json").read_text())["config"]
    cfg["data"]["cache"] = "none"
    records = read_datalist(cfg["data"]["datalist"], classes=cfg["data"]["classes"])
    folds = group_kfold(records, int(cfg["train"]["folds"]), seed=cfg["seed"])
    rows = []
    for i, test_idx in enumerate(folds):
        state = load_checkpoint(args.cv_run / f"fold{i}" / "best.pt")
        model = model_from_checkpoint(state)
        train_all = np.setdiff1d(np.arange(len(records)), test_idx)
        tr, va = carve_validation(records, train_all, cfg["data"]["val_fraction"], seed=cfg["seed"] + i)
        y_tr = np.array([records[j]["label"] == cfg["data"]["classes"][1] for j in tr])
        offset = float(np.log((~y_tr).sum() / y_tr.sum())) if cfg["train"]["class_balance"] != "none" else 0.0

        def logits(idx):
            recs = [records[j] for j in idx]
            p = predict_loader(model, _loader(build_dataset(cfg, recs, False), cfg, False, None, 0), torch.device("cpu"))
            return p["logit"], p["label"]

        zv, yv = logits(va)
        zt, yt = logits(test_idx)
        t_only = fit_temperature(zv, yv)
        t_off = fit_temperature(zv - offset, yv)
        row = {"fold": i, "offset": offset, "temperature": t_off,
               "ece_raw": ece(yt, apply_temperature(zt, 1.0)),
               "ece_temperature_only": ece(yt, apply_temperature(zt, t_only)),
               "ece_offset_temperature": ece(yt, apply_temperature(zt - offset, t_off))}
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    summary = summarise_folds([{k: v for k, v in r.items() if k != "fold"} for r in rows])
    for k in ("ece_raw", "ece_temperature_only", "ece_offset_temperature"):
        print(f"{k:24s} {summary[k]['mean']:.4f} ± {summary[k]['sd']:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"folds": rows, "mean_sd": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
