"""Which calibration keeps probabilities honest on a site the model never saw?

For each leave-one-site-out run (``breastai train --folds sites``) and each fold, the fold's
``best.pt`` scores its validation part (carved from the training site, exactly as in training)
and its held-out site. Every method below is fitted on the validation part only, never on the
held-out site, and judged there by 10-bin ECE (and AUC, which only flip averaging and the
ensemble can change):

- ``as trained``: the checkpoint's own offset and temperature (the default; the run's figure).
- ``offset only``: the class-weighting offset removed, no temperature.
- ``temperature, platt targets``: the temperature fitted on Platt's prior-corrected targets.
- ``platt scaling``: slope and intercept on the log-odds fitted on the validation part.
- ``flip average``: the image and its mirror scored, the mean logit, offset + temperature refitted.
- ``ensemble``: with several runs, the mean of their as-trained calibrated log-odds per case.

The held-out site's ECE is printed beside what a perfectly calibrated model would show there
from sampling alone (:func:`breastai.reporting.metrics.ece_noise_floor` of the as-trained
probabilities).

Usage::

    PYTHONPATH=. python benchmarks/site_calibration.py checkpoints/xs_default_s0 checkpoints/xs_default_s1 \
        [--out site_calibration.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.keys import Keys  # noqa: E402
from breastai.engine.cv import run_folds  # noqa: E402
from breastai.engine.scoring import predict_records  # noqa: E402
from breastai.models.calibration import calibrated_logit, fit_platt, fit_temperature  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.reporting.metrics import ece, ece_noise_floor, roc_auc  # noqa: E402

METHODS = ("as trained", "offset only", "temperature, platt targets", "platt scaling", "flip average")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def score_fold(run: Path, fold: int, records: list, parts: tuple, cfg: dict) -> dict:
    """Held-out log-odds of one fold under every method, fitted on its validation part."""
    _, va, test_idx = parts
    state = load_checkpoint(run / f"fold{fold}" / "best.pt")
    flipped = dataclasses.replace(state, config={**state.config, "eval": {**state.config["eval"], "flip_average": True}})
    positive = cfg["data"]["classes"][1]
    cpu = torch.device("cpu")

    def logits(ckpt, idx):
        return predict_records(ckpt, [records[j] for j in idx], cpu)["logit"].astype(np.float64)

    yv = np.array([records[j][Keys.LABEL] == positive for j in va], dtype=np.int64)
    yt = np.array([records[j][Keys.LABEL] == positive for j in test_idx], dtype=np.int64)
    zv, zt = logits(state, va), logits(state, test_idx)
    fzv, fzt = logits(flipped, va), logits(flipped, test_idx)
    off = float(state.logit_offset or 0.0)
    targets = state.config["eval"]["calibration_targets"]
    a, b = fit_platt(zv - off, yv)
    z = {
        "as trained": calibrated_logit(zt, {"logit_offset": off, "temperature": state.temperature}),
        "offset only": zt - off,
        "temperature, platt targets": (zt - off) / fit_temperature(zv - off, yv, targets="platt"),
        "platt scaling": a * (zt - off) + b,
        "flip average": (fzt - off) / fit_temperature(fzv - off, yv, targets=targets),
    }
    site = records[test_idx[0]].get(Keys.SITE, "")
    return {"run": run.name, "fold": fold, "held_out": site, "y": yt, "z": z,
            "case_id": [records[j][Keys.CASE_ID] for j in test_idx]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="leave-one-site-out run folders")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    scored = []
    for run in args.runs:
        for i, _, records, parts, cfg in run_folds(run, "sites"):
            scored.append(score_fold(run, i, records, parts, cfg))
    rows = []
    for s in scored:
        row = {"run": s["run"], "held_out": s["held_out"], "n": len(s["y"])}
        for m in METHODS:
            row[f"ece {m}"] = ece(s["y"], _sigmoid(s["z"][m]))
        row["auc as trained"] = roc_auc(s["y"], s["z"]["as trained"])
        row["auc flip average"] = roc_auc(s["y"], s["z"]["flip average"])
        row["ece floor"] = ece_noise_floor(_sigmoid(s["z"]["as trained"]))["mean"]
        rows.append(row)
    for site in sorted({s["held_out"] for s in scored}):
        members = [s for s in scored if s["held_out"] == site]
        if len(members) > 1 and all(m["case_id"] == members[0]["case_id"] for m in members):
            zbar = np.mean([m["z"]["as trained"] for m in members], axis=0)
            y = members[0]["y"]
            rows.append({"run": f"ensemble of {len(members)}", "held_out": site, "n": len(y),
                         "ece ensemble": ece(y, _sigmoid(zbar)), "auc ensemble": roc_auc(y, zbar)})
    cols = ["run", "held_out", "n", *[f"ece {m}" for m in METHODS], "ece ensemble", "ece floor",
            "auc as trained", "auc flip average", "auc ensemble"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
