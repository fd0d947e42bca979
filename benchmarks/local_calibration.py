"""How many local cases ``breastai calibrate`` needs: repeated draws of a site's labelled cases.

The checkpoint scores every row of the site's datalist ONCE (its calibrated log-odds, with its own
preset). Then for each sample size and each draw, a stratified random sample of that size (the
site's class balance, rounded; seeded) is the local sample: the recalibration is fitted on it with
the command's own code (:func:`breastai.engine.recalibrate.fit_local`) and measured on the REST of
the site: ECE, sensitivity and specificity at the refitted threshold, and AUC for reference (a
recalibration never changes the ranking, so the AUC differences are the draws' only). The
baseline is the checkpoint as it came, measured on the same rest rows.

With ``--adapt-halves SEED`` the site is first split at random into two halves and each half is
scored by the checkpoint with its batch-norm statistics taken from the OTHER half's images
(``breastai adapt``'s :func:`breastai.engine.adapt.batchnorm_statistics`, no labels read), so the
recalibration is fitted and measured on adapted scores, none of them from statistics that saw the
image.

Usage::

    PYTHONPATH=. python benchmarks/local_calibration.py --checkpoint C --data data/breast.csv \\
        [--draws 200] [--sizes 20,50,100] [--methods temperature,platt] [--threshold-method M] [--adapt-halves 0] [--out F.json]

Prints per method and size: the mean, SD and 5-95 % range over the draws, and the share of draws
whose ECE on the rest is at most 0.05; ``--out`` writes every draw's figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.distributed import resolve_device  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.engine.adapt import adapted_checkpoint, batchnorm_statistics  # noqa: E402
from breastai.engine.recalibrate import METHODS, TooFewCasesError, fit_local, local_log_odds  # noqa: E402
from breastai.models.calibration import TARGETS, apply_temperature  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.reporting.metrics import binary_metrics, ece, ece_noise_floor, roc_auc  # noqa: E402

FIGURES = ("ece", "sensitivity", "specificity", "auc")
TARGET_ECE = 0.05


def stratified_draw(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a random sample of ``n`` cases with the class balance of ``y`` (rounded), sorted."""
    n_pos = int(round(n * y.mean()))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    return np.sort(np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, n - n_pos, replace=False)])


def measure(y: np.ndarray, p: np.ndarray, z: np.ndarray, threshold: float) -> dict[str, float]:
    """ECE, sensitivity and specificity at ``threshold``, and AUC (of the log-odds ``z``)."""
    m = binary_metrics(y, p, threshold)
    return {"ece": ece(y, p), "sensitivity": m["sensitivity"], "specificity": m["specificity"], "auc": roc_auc(y, z)}


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "p5": float(np.quantile(a, 0.05)), "p95": float(np.quantile(a, 0.95))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="the site's labelled datalist")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--sizes", default="20,50,100", help="local sample sizes, comma-separated")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threshold-method", default=None, help="default: the checkpoint's eval.threshold_method")
    ap.add_argument("--targets", choices=TARGETS, default=None, help="default: the checkpoint's eval.calibration_targets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--adapt-halves", type=int, default=None, metavar="SEED",
                    help="score each random half with batch-norm statistics from the other half's images")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")

    ckpt = load_checkpoint(args.checkpoint)
    ev = ckpt.config.get("eval", {})
    thr_method = args.threshold_method or str(ev.get("threshold_method", "youden"))
    targets = args.targets or str(ev.get("calibration_targets", "hard"))
    records = read_samples(args.data, ckpt.config["data"], ckpt.classes)
    t0 = time.time()
    device = resolve_device(args.device)
    pred = local_log_odds(ckpt, records, device, progress=True)
    z, y = pred["logit"], pred["label"].astype(np.int64)
    if args.adapt_halves is not None:
        half = np.random.default_rng(args.adapt_halves).permutation(y.size) % 2
        z = z.copy()
        for h in (0, 1):
            stats = batchnorm_statistics(ckpt, [r for r, k in zip(records, half) if k != h], device)
            mine = np.flatnonzero(half == h)
            z[mine] = local_log_odds(adapted_checkpoint(ckpt, stats), [records[i] for i in mine], device)["logit"]
        print(f"batch-norm statistics cross-fitted on two halves (seed {args.adapt_halves})")
    print(f"{args.data}: {y.size} cases ({int(y.sum())} {ckpt.classes[1]}), scored once in {time.time() - t0:.0f} s; "
          f"threshold method {thr_method}, targets {targets}, {args.draws} stratified draws per size (seed {args.seed})")
    whole = measure(y, apply_temperature(z, 1.0), z, ckpt.threshold)
    print("no recalibration, whole site: " + "  ".join(f"{k} {v:.3f}" for k, v in whole.items())
          + f"  (threshold {ckpt.threshold:.3f})")

    rng = np.random.default_rng(args.seed)
    draws: dict[str, dict[int, list[dict[str, float]]]] = {m: {n: [] for n in sizes} for m in ["none", *methods]}
    refused = {n: 0 for n in sizes}
    floors = {}
    for n in sizes:
        for d in range(args.draws):
            idx = stratified_draw(y, n, rng)
            rest = np.setdiff1d(np.arange(y.size), idx)
            draws["none"][n].append(measure(y[rest], apply_temperature(z[rest], 1.0), z[rest], ckpt.threshold))
            for method in methods:
                try:
                    fit = fit_local(z[idx], y[idx], method, targets, thr_method, ckpt.threshold, ckpt.classes)
                except TooFewCasesError:
                    refused[n] += 1
                    continue
                row = measure(y[rest], fit.probability(z[rest]), z[rest], fit.threshold)
                draws[method][n].append({**row, "slope": fit.slope, "intercept": fit.intercept,
                                         "threshold": fit.threshold})
                if d == 0 and method == methods[-1]:  # what a perfectly calibrated model would show on the rest
                    floors[n] = ece_noise_floor(fit.probability(z[rest]), n_draws=500)

    print(f"\n{'method':12s} {'n':>4s}  " + "  ".join(f"{f:>22s}" for f in FIGURES) + f"  ECE<={TARGET_ECE}")
    for method in ["none", *methods]:
        for n in sizes:
            rows = draws[method][n]
            if not rows:
                continue
            cells = [summary([r[f] for r in rows]) for f in FIGURES]
            ok = np.mean([r["ece"] <= TARGET_ECE for r in rows])
            print(f"{method:12s} {n:4d}  " + "  ".join(f"{c['mean']:.3f}±{c['sd']:.3f} ({c['p5']:.2f}-{c['p95']:.2f})"
                                                       for c in cells) + f"  {ok:.2f}")
    for n in sizes:
        print(f"ECE noise floor on the rest ({y.size - n} cases, perfectly calibrated {methods[-1]} probabilities of "
              f"draw 0): mean {floors[n]['mean']:.3f}, 95th percentile {floors[n]['q95']:.3f}"
              + (f"; {refused[n]} fits refused (too few of a class)" if refused[n] else ""))
    if args.out:
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), "n": int(y.size),
                                        "threshold_method": thr_method, "targets": targets, "seed": args.seed,
                                        "whole_site_uncalibrated": whole, "noise_floor": floors,
                                        "draws": {m: {str(n): v for n, v in d.items()} for m, d in draws.items()}},
                                       indent=1))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    sys.exit(main())
