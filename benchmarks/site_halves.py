"""Pipelines at a new site, changed on one half of its images and evaluated on the other.

Reads ``breastai evaluate --auto-outline`` folders (``predictions.csv``: per image probability, call,
n_lesions, dice) of each (pipeline, evaluation half) and prints per variant the mean over them of
the AUC, the ECE, the sensitivity and specificity of the calls, the lesions missed and the Dice mean,
and each one's AUC. A variant is a pattern with ``{K}`` (the pipeline) and ``{H}`` (the half
evaluated); ``--as-trained`` may point at folders over the whole site, which are cut to each half's
case_ids. Used for docs/experiments.md, "The automatic pipeline adapted to a new site's raw images"
(``adapt`` on one half) and "What local recalibration buys the automatic pipeline's calls at a new
site" (``calibrate`` on one half).

    python benchmarks/site_halves.py --halves data/breast_half_a.csv data/breast_half_b.csv \\
        --as-trained '/tmp/ev_br_p3_f{K}' --variant segmenter '/tmp/adapt_br/evB_f{K}_{H}' \\
        --variant pipeline '/tmp/adapt_br/evC_f{K}_{H}' --variant calibrated '/tmp/cal/ev{K}_{H}'
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from breastai.reporting.metrics import ece, roc_auc  # noqa: E402


def figures(rows: list[dict]) -> dict[str, float]:
    y = np.array([r["label"] == "malignant" for r in rows], dtype=int)
    p = np.array([float(r["probability"]) for r in rows])
    dice = [float(r["dice"]) if r.get("dice") not in (None, "") else 0.0 for r in rows]
    called = np.array([r["predicted"] == "malignant" for r in rows])
    return {"auc": roc_auc(y, p), "ece": ece(y, p), "sens": float(called[y == 1].mean()),
            "spec": float(1 - called[y == 0].mean()), "missed": sum(int(r["n_lesions"] or 0) == 0 for r in rows),
            "dice": float(np.mean(dice)), "n": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--halves", nargs=2, type=Path, required=True, help="the two halves' datalists (a, b)")
    ap.add_argument("--as-trained", required=True, help="pattern with {K}: folders over the whole site")
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "PATTERN"), default=[],
                    help="pattern with {K} and {H} (the half evaluated: a or b)")
    ap.add_argument("--folds", default="0,1,2,3,4")
    a = ap.parse_args()
    halves = {h: {r["case_id"] for r in csv.DictReader(open(p))} for h, p in zip("ab", a.halves)}
    out: dict[str, list[dict]] = {}
    for k in a.folds.split(","):
        whole = list(csv.DictReader(open(Path(a.as_trained.format(K=k)) / "predictions.csv")))
        for h, ids in halves.items():
            out.setdefault("as trained", []).append(figures([r for r in whole if r["case_id"] in ids]))
            for name, pattern in a.variant:
                folder = Path(pattern.format(K=k, H=h))
                if (folder / "predictions.csv").exists():
                    out.setdefault(name, []).append(figures(list(csv.DictReader(open(folder / "predictions.csv")))))
    for name, figs in out.items():
        mean = {key: float(np.mean([f[key] for f in figs])) for key in ("auc", "ece", "sens", "spec", "missed", "dice")}
        print(f"{name:12s} n={len(figs):2d}  AUC {mean['auc']:.3f}  ECE {mean['ece']:.3f}  sensitivity {mean['sens']:.3f}"
              f"  specificity {mean['spec']:.3f}  missed {mean['missed']:.1f}"
              f"  Dice {mean['dice']:.3f}  | AUC each " + " ".join(f"{f['auc']:.3f}" for f in figs))


if __name__ == "__main__":
    main()
