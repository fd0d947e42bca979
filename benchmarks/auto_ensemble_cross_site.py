"""The two-member automatic pipeline across sites: members trained on one site, the combination
fitted there on out-of-fold automatic outlines, the other site outlined and scored with no human input.

The members are fold ``--fold`` of two leave-one-site-out runs made with the same seed (so the same
validation part): a crop classifier and a whole-image one. Their validation images are outlined by
the fold of a segmenter CV run (``--seg-run``) that held each of them out (images it never held
out are left out of the fit); the held-out site by ``--segmenter`` (a segmenter trained on the
training site). Printed beside it: the crop member alone on the same outlines. The rule and the
outcome are in docs/experiments.md ("The automatic pipeline as a two-member scorer").

Usage::

    PYTHONPATH=. python benchmarks/auto_ensemble_cross_site.py --crop-run checkpoints/xs_ema_s0 \\
        --whole-run checkpoints/xs_whole_s0 --seg-run checkpoints/seg_f5 \\
        --segmenter checkpoints/seg_busi_all_e24/best.pt [--fold 0] [--out auto_xs.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from breastai.engine.auto_outline import score_outlined
from breastai.engine.bundle import bundle_pipeline
from breastai.engine.cv import load_cv_summary, run_folds
from breastai.engine.ensemble import ensemble_state
from breastai.engine.ensemble_outlines import fit_on_outlines
from breastai.engine.scoring import row_names
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.outliner import Outliner
from breastai.reporting.metrics import bootstrap_auc_ci, ece, roc_auc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crop-run", type=Path, required=True)
    ap.add_argument("--whole-run", type=Path, required=True)
    ap.add_argument("--seg-run", type=Path, required=True, help="segmenter CV run on the training site")
    ap.add_argument("--segmenter", required=True, help="segmenter for the held-out site")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    logging.getLogger("breastai").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    _, fold_dir, records, (_, va, te), cfg = next(f for f in run_folds(args.crop_run, "sites") if f[0] == args.fold)
    members = [load_checkpoint(fold_dir / "best.pt"), load_checkpoint(args.whole_run / f"fold{args.fold}" / "best.pt")]
    names = row_names(cfg["data"]["datalist"], records)
    held = {str(p["case_id"]): int(p["fold"]) for p in load_cv_summary(args.seg_run)["oof_predictions"]}
    seg_folds = {k: Outliner.from_checkpoint(args.seg_run / f"fold{k}" / "best.pt") for k in sorted(set(held.values()))}
    val = [j for j in va if str(records[j]["case_id"]) in held]
    print(f"validation part: {len(va)} images, {len(val)} with an out-of-fold outline", flush=True)
    weights, bias, _, found = fit_on_outlines(members, [records[j] for j in val],
                                              [seg_folds[held[str(records[j]["case_id"])]] for j in val], "stack", dev,
                                              [names[j] for j in val])
    print(f"weights {np.round(weights, 3).tolist()} (crop, whole), bias {bias:.3f}; fitted on {int(found.sum())} "
          f"images, {int((~found).sum())} with no lesion found", flush=True)
    state = ensemble_state(members, weights, bias, "stack", 0.5, {}, ["crop", "whole"])
    segmenter = load_checkpoint(args.segmenter)
    pipeline = bundle_pipeline(state, segmenter)
    test = [records[j] for j in te]
    outliner = Outliner(segmenter, "cpu", args.segmenter)
    summary = {"weights": weights.tolist(), "bias": bias, "n_fitted": int(found.sum())}
    for name, ckpt in (("crop alone", members[0]), ("crop + whole, fitted on automatic outlines", pipeline)):
        pred, p, rep, _ = score_outlined(ckpt, test, outliner, True, dev, 0, [names[j] for j in te])
        y = np.asarray(pred["label"])
        lo, hi = bootstrap_auc_ci(y, p, n_boot=2000)
        summary[name] = {"auc": roc_auc(y, p), "auc_ci": [lo, hi], "ece": ece(y, p),
                         "no_lesion_found": rep["outline"]["n_no_lesion_found"]}
        print(f"{name}: AUC {summary[name]['auc']:.3f} ({lo:.3f}-{hi:.3f}), ECE {summary[name]['ece']:.3f}, "
              f"no lesion found {summary[name]['no_lesion_found']}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
