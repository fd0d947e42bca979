"""The image's probability of cancer as presence x probability, pooled over evaluate folders.

Each pair of folders is one held-out part: ``breastai evaluate --auto-outline`` of a pipeline (its
``predictions.csv`` gives each image's probability ``p``: its most malignant lesion, or the
whole-image members where none was found; rows labelled ``normal`` are the lesion-free images) and
``breastai evaluate`` of the segmenter on the same datalist (``presence_probability`` ``q``). Pooled
over the pairs: the AUC of malignant against benign and normal images by ``p`` and by ``q x p``
(predict's ``cancer_probability``), the same over the lesion images alone, paired bootstrap CIs of
both gains, and how many normal images rank above the median benign one. Rule and outcome in
docs/experiments.md ("The image's probability of cancer as lesion presence times malignancy").

    python benchmarks/presence_weighting.py ev_p3_f0 ev_seg0 ev_p3_f1 ev_seg1 ev_p3_f3 ev_seg3 ev_p3_f4 ev_seg4
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from breastai.reporting.auc_compare import paired_auc_difference_ci  # noqa: E402
from breastai.reporting.metrics import roc_auc  # noqa: E402


def load_pair(pipeline: Path, segmenter: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, p, q) of one held-out part, joined on case_id."""
    q = {r["case_id"]: float(r["presence_probability"]) for r in csv.DictReader(open(segmenter / "predictions.csv"))}
    rows = list(csv.DictReader(open(pipeline / "predictions.csv")))
    missing = [r["case_id"] for r in rows if r["case_id"] not in q]
    if missing:
        raise SystemExit(f"{segmenter}: no presence for {len(missing)} case(s) of {pipeline}, e.g. {missing[0]}")
    return (np.array([r["label"] for r in rows]), np.array([float(r["probability"]) for r in rows]),
            np.array([q[r["case_id"]] for r in rows]))


def paired_ci(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int) -> list[float]:
    """95 % paired bootstrap CI of AUC(a) - AUC(b) on the same images."""
    _, lo, hi = paired_auc_difference_ci(y, a, b, n_boot)
    return [round(lo, 4), round(hi, 4)]


def figures(labels: np.ndarray, p: np.ndarray, q: np.ndarray, n_boot: int) -> dict:
    y = (labels == "malignant").astype(int)
    lesion = labels != "normal"
    qp = q * p
    benign, normal = labels == "benign", labels == "normal"
    out = {"n": int(len(y)), "n_malignant": int(y.sum()), "n_normal": int(normal.sum()),
           "all_images_auc_p": round(roc_auc(y, p), 4), "all_images_auc_qp": round(roc_auc(y, qp), 4),
           "lesion_images_auc_p": round(roc_auc(y[lesion], p[lesion]), 4),
           "lesion_images_auc_qp": round(roc_auc(y[lesion], qp[lesion]), 4),
           "normal_above_median_benign_p": int((p[normal] > np.median(p[benign])).sum()),
           "normal_above_median_benign_qp": int((qp[normal] > np.median(qp[benign])).sum())}
    if n_boot:
        out["all_images_gain_ci"] = paired_ci(y, qp, p, n_boot)
        out["lesion_images_gain_ci"] = paired_ci(y[lesion], qp[lesion], p[lesion], n_boot)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", type=Path, nargs="+", help="pairs: PIPELINE_EVAL SEGMENTER_EVAL ...")
    ap.add_argument("--n-boot", type=int, default=2000)
    a = ap.parse_args()
    if len(a.folders) % 2:
        raise SystemExit("give the folders in pairs: a pipeline's evaluate folder, then its segmenter's")
    pairs = [load_pair(a.folders[i], a.folders[i + 1]) for i in range(0, len(a.folders), 2)]
    report = {"pooled": figures(*[np.concatenate(x) for x in zip(*pairs)], a.n_boot),
              "per_part": {str(a.folders[2 * k]): figures(*part, 0) for k, part in enumerate(pairs)}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
