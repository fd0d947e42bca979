"""The cross-site table: each leave-one-site-out run's held-out site, as a markdown table.

Each run is a ``breastai train --folds sites`` folder: fold k was trained on every site but one
(its validation part carved from those sites) and scored on the held-out site only. Prints, per
run and held-out site: n, AUC with its bootstrap 95% CI, ECE, sensitivity and specificity at the
threshold chosen on the training sites' validation part, and the share the OOD detector flags.

Usage::

    python benchmarks/cross_site_table.py checkpoints/xs_default_s0 checkpoints/xs_default_s1 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(v: object, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:]]
    if not runs:
        sys.exit(__doc__)
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


if __name__ == "__main__":
    main()
