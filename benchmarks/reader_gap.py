"""The model against the site's own reader: BrEaST's BI-RADS assessment as a second ranking.

BrEaST-Lesions_USG records, for every lesion, the radiologist's BI-RADS category (2, 3, 4a, 4b,
4c, 5) and the reader's interpretation (a list of entities, "Breast scar (surgery)", "Mastitis",
...). Read as a score (2 < 3 < 4a < 4b < 4c < 5), BI-RADS is a ranking of the same lesions by a
reader who also had the patient's history and the whole exam. This prints, for each
leave-one-site-out run's held-out BrEaST predictions (``oof_predictions.csv``, site
``breast-lesions-usg``):

1. AUC with bootstrap 95% CI of the model and of BI-RADS, on all lesions and without the lesions
   whose interpretation depends on the history rather than the image (post-surgical or
   post-radiotherapy scars, haematoma, implants, mastitis, fat necrosis, abscess, seroma);
2. within BI-RADS 4 (4a-4c: the biopsied, uncertain lesions): the model's AUC and that of the
   reader's sub-category;
3. the model's mean and median probability per BI-RADS category and class, and its Spearman
   correlation with BI-RADS;
4. what the model adds to the reader: a logistic regression on BI-RADS (its rank, 0-5) against
   one on BI-RADS and the model's calibrated log-odds, each fitted and scored by 5-fold
   cross-validation within BrEaST (50 repeats; mean AUC of the pooled out-of-fold scores, all
   lesions and BI-RADS 4a-4c; the difference on the first split with a paired bootstrap
   interval). A measure of information, not a model to deploy: the combination is fitted on
   BrEaST's labels.

Usage::

    python benchmarks/reader_gap.py checkpoints/xs_ema_s0 checkpoints/xs_ema_s1 \
        [--clinical ../shared/data/breast-lesions-usg/clinical.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.reporting.auc_compare import paired_auc_difference_ci  # noqa: E402
from breastai.reporting.metrics import bootstrap_auc_ci, roc_auc  # noqa: E402

SITE = "breast-lesions-usg"
BIRADS = {"2": 2.0, "3": 3.0, "4a": 4.1, "4b": 4.2, "4c": 4.3, "5": 5.0}
# Entities a reader recognises from the history (an operation, an implant, an infection), not
# from the lesion's look: on the image alone they mimic cancer (irregular, shadowing).
HISTORY = ("Breast scar", "Hematoma", "Silicone implant", "Implant rupture", "Mastitis", "Fat necrosis", "Abscess",
           "Seroma")


def _auc(y: np.ndarray, s: np.ndarray) -> str:
    lo, hi = bootstrap_auc_ci(y, s, n_boot=2000)
    return f"{roc_auc(y, s):.3f} ({lo:.3f}-{hi:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="leave-one-site-out run folders")
    ap.add_argument("--clinical", type=Path, default=REPO.parent / "shared/data/breast-lesions-usg/clinical.csv")
    args = ap.parse_args()
    if not args.clinical.is_file():
        sys.exit(f"{args.clinical}: not found (BrEaST-Lesions_USG's clinical.csv; see ../shared/data/README.md)")
    clinical = {f"case{int(r['CaseID']):03d}": r for r in csv.DictReader(open(args.clinical))}
    print("| run | lesions | n | model AUC (95% CI) | BI-RADS AUC (95% CI) |")
    print("|---|---|---|---|---|")
    per_run = {}
    for run in args.runs:
        oof = [p for p in csv.DictReader(open(run / "oof_predictions.csv")) if p.get("site") == SITE]
        if not oof:
            sys.exit(f"{run}: no held-out {SITE} predictions (not a leave-one-site-out run on both sites?)")
        rows = [clinical[p["case_id"].split("/")[-1]] for p in oof]
        y = np.array([int(p["label"]) for p in oof])
        z = np.array([float(p["calibrated_logit"]) for p in oof])
        b = np.array([BIRADS[r["BIRADS"].lower()] for r in rows])
        image_only = np.array([not any(t in r["Interpretation"] for t in HISTORY) for r in rows])
        four = (b > 4) & (b < 5)
        for name, sel in (("all", np.ones_like(y, bool)), ("without history-dependent entities", image_only),
                          ("BI-RADS 4a-4c", four)):
            print(f"| {run.name} | {name} | {sel.sum()} | {_auc(y[sel], z[sel])} | {_auc(y[sel], b[sel])} |")
        per_run[run.name] = (y, z, b)
    print("\nMean (median) probability per BI-RADS category and class; Spearman correlation with BI-RADS\n")
    cats = sorted(BIRADS, key=BIRADS.get)
    print("| run | rho | " + " | ".join(f"{c} benign | {c} malignant" for c in cats) + " |")
    print("|---|---|" + "---|" * (2 * len(cats)))
    for name, (y, z, b) in per_run.items():
        p = 1.0 / (1.0 + np.exp(-z))
        cells = []
        for c in cats:
            for label in (0, 1):
                sel = (b == BIRADS[c]) & (y == label)
                cells.append(f"{p[sel].mean():.2f} ({np.median(p[sel]):.2f}), n {sel.sum()}" if sel.any() else "")
        print(f"| {name} | {spearmanr(b, z)[0]:.2f} | " + " | ".join(cells) + " |")
    print("\nBI-RADS alone against BI-RADS + the model (logistic regression, 5-fold CV within BrEaST, 50 repeats)\n")
    print("| run | BI-RADS: all | BI-RADS + model: all | difference (95% CI) | BI-RADS: 4a-4c | BI-RADS + model: 4a-4c |")
    print("|---|---|---|---|---|---|")
    for name, (y, z, b) in per_run.items():
        rank = np.searchsorted(sorted(BIRADS.values()), b).astype(float)
        four = (b > 4) & (b < 5)
        (alone, alone4, s0), (both, both4, s1) = (_added(y, feats, four) for feats in (rank[:, None], np.c_[rank, z]))
        print(f"| {name} | {alone} | {both} | {_paired_difference(y, s1, s0)} | {alone4} | {both4} |")


def _added(y: np.ndarray, x: np.ndarray, subset: np.ndarray, repeats: int = 50) -> tuple[str, str, np.ndarray]:
    """AUC of out-of-fold logistic-regression scores, mean ± sd over repeated splits (all, subset),
    and the first split's scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    aucs, first = [], None
    for rep in range(repeats):
        score = np.zeros(len(y))
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=rep).split(x, y):
            score[te] = LogisticRegression(max_iter=1000).fit(x[tr], y[tr]).decision_function(x[te])
        aucs.append((roc_auc(y, score), roc_auc(y[subset], score[subset])))
        first = score if first is None else first
    m, sd = np.mean(aucs, 0), np.std(aucs, 0)
    return f"{m[0]:.3f} ± {sd[0]:.3f}", f"{m[1]:.3f} ± {sd[1]:.3f}", first


def _paired_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 2000) -> str:
    """AUC(a) - AUC(b) on the same cases, with its paired bootstrap 95% interval (cases resampled)."""
    d, lo, hi = paired_auc_difference_ci(y, a, b, n_boot)
    return f"{d:+.3f} ({lo:+.3f} to {hi:+.3f})"


if __name__ == "__main__":
    main()
