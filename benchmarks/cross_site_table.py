"""The cross-site table: each leave-one-site-out run's held-out site, as a markdown table.

Each run is a ``breastai train --folds sites`` folder: fold k was trained on every site but one
(its validation part carved from those sites) and scored on the held-out site only. Prints, per
run and held-out site: n, AUC with its bootstrap 95% CI, ECE, sensitivity and specificity at the
threshold chosen on the training sites' validation part, and the share the OOD detector flags.

``--mean RUN,RUN[,...]`` adds a row per held-out site for the mean of those runs' calibrated
log-odds on each case (an unweighted ensemble of runs made on the same folds), from their
``oof_predictions.csv``.

Usage::

    python benchmarks/cross_site_table.py checkpoints/xs_default_s0 checkpoints/xs_default_s1 ... \
        [--mean checkpoints/xs_default_s0,checkpoints/xs_default_s1]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.reporting.metrics import bootstrap_auc_ci, ece, roc_auc  # noqa: E402


def _fmt(v: object, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _mean_rows(runs: list[Path]) -> None:
    tables = [{r["case_id"]: r for r in csv.DictReader(open(run / "oof_predictions.csv"))} for run in runs]
    ids = sorted(tables[0])
    for site in sorted({tables[0][i]["site"] for i in ids}):
        sel = [i for i in ids if tables[0][i]["site"] == site]
        y = np.array([int(tables[0][i]["label"]) for i in sel])
        z = np.mean([[float(t[i]["calibrated_logit"]) for i in sel] for t in tables], axis=0)
        lo, hi = bootstrap_auc_ci(y, z, n_boot=2000)
        print(f"| mean of {' + '.join(r.name for r in runs)} | -> {site} | {len(sel)} | {roc_auc(y, z):.3f} "
              f"({lo:.3f}-{hi:.3f}) | {ece(y, 1 / (1 + np.exp(-z))):.3f} | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--mean", action="append", default=[], help="comma-separated runs to average")
    args = ap.parse_args()
    runs = args.runs
    print("| run | trained on -> held-out site | n | AUC (95% CI) | ECE | sensitivity | specificity |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        summary = json.loads((run / "cv_summary.json").read_text())
        sites = [f.get("site") for f in summary["folds"]]
        for fold in summary["folds"]:
            others = "+".join(s for s in sites if s != fold.get("site"))
            ci = f"{fold['auc']:.3f} ({fold['auc_ci_low']:.3f}-{fold['auc_ci_high']:.3f})"
            print(f"| {run.name} | {others} -> {fold.get('site')} | {fold['n']} | {ci} | {_fmt(fold['ece'])} | "
                  f"{_fmt(fold['sensitivity'], 2)} | {_fmt(fold['specificity'], 2)} |")
    for group in args.mean:
        _mean_rows([Path(p) for p in group.split(",")])


if __name__ == "__main__":
    main()
