"""``breastai evaluate``: metrics, predictions and figures of a checkpoint on a labelled datalist."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def _columns(text: str) -> list[str]:
    cols = [c.strip() for c in text.split(",") if c.strip()]
    if not cols:
        raise argparse.ArgumentTypeError("give one or more column names, comma-separated")
    return cols


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai evaluate``."""
    from breastai.data.grouping import DICOM_FIELDS
    from breastai.reporting.levels import LEVELS

    e = subparsers.add_parser("evaluate", help="evaluate a checkpoint on a labelled datalist",
                              description="Evaluate a checkpoint: metrics.json (AUC with bootstrap CI, sensitivity and "
                              "specificity at the checkpoint's threshold, Brier, ECE), predictions.csv, roc.png, "
                              "calibration.png; per breast or exam with --level, per subgroup with --by.")
    e.add_argument("--checkpoint", required=True,
                   help="best.pt from a training run; a segmenter's is measured on its own outlines against the "
                   "datalist's traced masks (Dice, IoU, HD95, lesion presence AUC with lesion-free images)")
    e.add_argument("--data", required=True, help="labelled datalist CSV/JSON")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--level", choices=LEVELS, default="lesion",
                   help="what one case is: a datalist row (lesion, default), an image file, a breast (exam + "
                   "laterality) or an exam; images are combined by the max of their calibrated log-odds unless "
                   "--fit-on fits the rule")
    e.add_argument("--fit-on", metavar="VAL",
                   help="labelled validation datalist, or a cross-validation oof_predictions.csv, with the level's "
                   "structure: the combination rule, its recalibration and the threshold are fitted on it")
    e.add_argument("--by", type=_columns, metavar="COLUMN[,COLUMN]", default=[],
                   help="report n, prevalence, AUC (CI), sensitivity, specificity and ECE per value of each column: "
                   f"datalist columns, or for DICOM images {', '.join(DICOM_FIELDS)}")
    e.add_argument("--segmenter", metavar="SEG.pt",
                   help="a lesion segmenter's best.pt: rows without a mask are outlined automatically and each lesion "
                   "found is scored as a traced outline would be; a row's score is its most malignant lesion's, "
                   "probability 0 where no lesion is found (counted in metrics.json's outline)")
    e.add_argument("--auto-outline", action="store_true",
                   help="with --segmenter: outline EVERY row automatically, the datalist's traced masks set aside for "
                   "scoring (they only measure the outlines: Dice, IoU, HD95 in metrics.json's outline), so the "
                   "automatic pipeline is evaluated as a user without an annotation tool would run it; rows labelled "
                   "'normal' (lesion-free images) are outlined and scored too, for lesion presence and false calls, "
                   "outside the malignancy figures")
    e.set_defaults(func=run)
    return e


def _figure(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the headline figures (and each subgroup's)."""
    from breastai.engine.evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(args.checkpoint, args.data, args.out, device=args.device, level=args.level,
                              by=args.by, fit_on=args.fit_on, segmenter=args.segmenter, ignore_masks=args.auto_outline)
    if rep.get("task") == "segmentation":
        _print_segmentation(rep, args.out)
        return 0
    print(
        f"{rep['level']} level: n={rep['n']}  AUC {rep['auc']:.4f} (95% CI {rep['auc_ci_low']:.3f}-{rep['auc_ci_high']:.3f})  "
        f"sensitivity {rep['sensitivity']:.3f}  specificity {rep['specificity']:.3f}  ECE {rep['ece']:.3f}"
    )
    for col, groups in rep.get("subgroups", {}).items():
        for value, f in groups.items():
            auc = (f"AUC {f['auc']:.3f} ({f['auc_ci_low']:.3f}-{f['auc_ci_high']:.3f})" if f["auc"] is not None
                   else f"AUC n/a ({f['auc_note']})")
            print(f"  {col}={value}: n={f['n']} prevalence {f['prevalence']:.2f}  {auc}  sensitivity "
                  f"{_figure(f['sensitivity'])}  specificity {_figure(f['specificity'])}  ECE {f['ece']:.3f}")
    if "outline" in rep:
        o = rep["outline"]
        dice = (f"  Dice mean {_figure(o['dice_mean'])} median {_figure(o['dice_median'])} over {o['n_lesion']} traced "
                f"lesion(s), {o['missed']} missed" if o.get("n_lesion") else "")
        print(f"automatic outlines: {o['n_outlined']} row(s) outlined, {o['n_lesions_scored']} lesion(s) scored, "
              f"{o['n_no_lesion_found']} with no lesion found ({o['n_no_lesion_positive']} of them positive: "
              + ("scored on the whole image" if o.get("n_no_lesion_scored_on_image") else "probability 0") + f"){dice}")
        if "lesion_free" in o:
            f = o["lesion_free"]
            print(f"lesion-free images (label normal, outside the figures above): {f['n']}, {f['given_a_lesion']} given a "
                  f"lesion, {f['called_positive']} called positive at {f['threshold']:.3f}; lesion presence AUC "
                  f"{_figure(o['presence_auc'])}")
            if "auc_all_images" in f:
                print(f"malignant against benign and lesion-free images: AUC {f['auc_all_images']:.3f} by probability, "
                      f"{f['auc_all_images_cancer_probability']:.3f} by cancer_probability (presence x probability)")
    extra = ", subgroups.png" if args.by else ""
    print(f"report: {args.out}/metrics.json, predictions.csv, roc.png, calibration.png{extra}")
    return 0


def _print_segmentation(rep: dict[str, Any], out: str) -> None:
    ci = rep.get("presence_auc_ci")
    auc = "n/a (needs lesion and lesion-free images)" if rep["presence_auc"] is None else (
        f"{rep['presence_auc']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""))
    print(f"segmenter on {rep['n_images']} image(s), {rep['n_lesion']} with a traced lesion, {rep['n_normal']} without: "
          f"Dice mean {_figure(rep['dice_mean'])} median {_figure(rep['dice_median'])}, HD95 median "
          f"{_figure(rep['hd95_median'])} px, {rep['missed']} lesion image(s) missed; lesion presence AUC {auc}, "
          f"lesion-free images given a lesion {_figure(rep['false_lesion_rate'])} (threshold "
          f"{rep['presence_threshold']:.3f})")
    print(f"report: {out}/metrics.json, predictions.csv" + (", roc.png" if rep["presence_auc"] is not None else ""))
