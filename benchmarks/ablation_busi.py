"""Ablation table from cross-validation runs: mean AUC ± sd per model and DeLong tests on pooled OOF predictions.

Usage::

    breastai train --config configs/busi.yaml --folds 5             # image only
    breastai train --config configs/busi_radiomics.yaml --folds 5   # radiomics only
    breastai train --config configs/busi_fusion.yaml --folds 5      # fusion
    PYTHONPATH=. python benchmarks/ablation_busi.py \\
        --runs image=checkpoints/busi radiomics=checkpoints/busi_radiomics fusion=checkpoints/busi_fusion \\
        --out ablation_busi.json

Each ``DIR`` holds a ``cv_summary.json``. The runs must share their folds (same datalist and seed:
``group_kfold`` is deterministic); this is checked case by case. DeLong tests compare the model
named ``fusion`` (``--reference``) with every other model on the cases all runs predicted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.files import atomic_write_text  # noqa: E402
from breastai.reporting.auc_compare import delong_test  # noqa: E402
from breastai.engine.cv import load_cv_summary as load_run  # noqa: E402

__all__ = ["load_run", "ablation", "format_table", "main"]


def _oof(name: str, s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in s["oof_predictions"]:
        cid = str(p["case_id"])
        if cid in out:
            raise ValueError(f"run {name!r}: case {cid!r} predicted twice out of fold")
        out[cid] = p
    return out


def ablation(runs: dict[str, dict[str, Any]], reference: str = "fusion") -> dict[str, Any]:
    """Per-model fold AUCs and DeLong tests of ``reference`` against every other model.

    Raises:
        ValueError: unknown reference, or runs whose folds differ for a shared case.
    """
    if reference not in runs:
        raise ValueError(f"reference model {reference!r} not among the runs {sorted(runs)}")
    oofs = {n: _oof(n, s) for n, s in runs.items()}
    common = sorted(set.intersection(*(set(o) for o in oofs.values())))
    if not common:
        raise ValueError("the runs share no case_id: were they trained on the same datalist?")
    for cid in common:
        folds = {n: int(o[cid]["fold"]) for n, o in oofs.items()}
        labels = {n: int(o[cid]["label"]) for n, o in oofs.items()}
        if len(set(folds.values())) > 1 or len(set(labels.values())) > 1:
            raise ValueError(f"case {cid!r}: runs disagree on fold/label {folds} {labels}: not the same folds")
    y = np.array([int(oofs[reference][c]["label"]) for c in common])
    models: dict[str, Any] = {}
    for n, s in runs.items():
        aucs = [float(f["auc"]) for f in s["folds"]]
        models[n] = {
            "fold_auc": aucs,
            "mean_auc": float(np.mean(aucs)),
            "sd_auc": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else float("nan"),
            "n_cases": len(oofs[n]),
        }
    tests = []
    def scores(run: str) -> np.ndarray:
        # One column per run, as training pools them: log-odds only when every row has them (a run
        # resumed across the change has probabilities in its older folds; mixed, they would not rank).
        rows = [oofs[run][c] for c in common]
        key = "calibrated_logit" if all(r.get("calibrated_logit") is not None for r in rows) else "probability"
        return np.array([float(r[key]) for r in rows])

    ref_p = scores(reference)
    for n in runs:
        if n == reference:
            continue
        p = scores(n)
        a1, a2, z, pv = delong_test(y, ref_p, p)
        tests.append({"a": reference, "b": n, "auc_a": a1, "auc_b": a2, "delta": a1 - a2, "z": z, "p_value": pv})
        models[n]["pooled_auc"] = a2
        models[reference]["pooled_auc"] = a1
    return {"models": models, "delong": tests, "n_common_cases": len(common), "reference": reference}


def format_table(res: dict[str, Any]) -> str:
    """Plain-text table: model, mean AUC ± sd over folds, pooled OOF AUC; then the DeLong tests."""
    w = max([12, *(len(n) for n in res["models"])])
    lines = [f"{'model':<{w}} {'mean AUC ± sd (folds)':>24} {'pooled OOF AUC':>15}"]
    for n, m in res["models"].items():
        pooled = f"{m['pooled_auc']:.4f}" if "pooled_auc" in m else "-"
        lines.append(f"{n:<{w}} {m['mean_auc']:>14.4f} ± {m['sd_auc']:.4f} ({len(m['fold_auc'])}) {pooled:>15}")
    lines.append(f"DeLong on {res['n_common_cases']} pooled out-of-fold cases:")
    for t in res["delong"]:
        lines.append(f"  {t['a']} vs {t['b']}: AUC {t['auc_a']:.4f} vs {t['auc_b']:.4f} "
                     f"(Δ {t['delta']:+.4f}), z = {t['z']:.2f}, p = {t['p_value']:.4g}")
    return "\n".join(lines)


def _parse_runs(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    runs = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--runs: {item!r} is not NAME=DIR")
        name, d = item.split("=", 1)
        runs[name] = load_run(d)
    return runs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry: print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, metavar="NAME=DIR",
                    help="CV run folders, e.g. image=DIR radiomics=DIR fusion=DIR")
    ap.add_argument("--reference", default="fusion", help="model compared with every other (default: fusion)")
    ap.add_argument("--out", default="ablation_busi.json", help="JSON output (default: ablation_busi.json)")
    args = ap.parse_args(argv)
    res = ablation(_parse_runs(args.runs), reference=args.reference)
    res["runs"] = {i.split("=", 1)[0]: i.split("=", 1)[1] for i in args.runs}
    print(format_table(res))
    atomic_write_text(args.out, json.dumps(res, indent=1, default=float))
    print(f"written: {args.out}")
    return res


if __name__ == "__main__":
    main()
