"""The whole image beside the lesion crop, behind the segmenter: BUSI's folds and BrEaST, no human input.

Per BUSI fold K (single runs trained on ``data/busi_fK.csv``: the image-only crop ``--crop``, the
whole-image model ``--whole``, both seed 0 so that they share the validation part), each member's
calibrated log-odds per image (the crop's the highest over the lesions found), combined as
``breastai ensemble --combine mean`` combines them, the scale and bias fitted on the validation part
outlined by the segmenter that held each image out (its own BUSI fold's, ``--seg`` with ``{fold}``),
or on the traced outlines (the product's path for single runs). The held-out fold is outlined by
fold K's segmenter. Rows, over the pooled held-out lesion images:

* ``crop``: the crop behind the segmenter, probability 0 where nothing is found (today's pipeline);
* ``whole``: the whole-image model alone;
* ``both``: the combination, the whole-image member alone where nothing is found (the fallback);
* ``both_no_fallback``: the same, 0 where nothing is found;
* ``both_traced_fit``: the combination fitted on traced outlines, with the fallback;
* with several ``--crop`` members (a lesion's averaged on its one outline): ``crop_first`` and
  ``both_first_crop``, the same with the first crop member alone (its own fit), and the paired gain.

With ``--site``: the same pairs (each with its BUSI fit) on another site's datalist, outlined once
by ``--site-segmenter``; the AUC and ECE of each fold's pair, and their mean. Rule and outcome in
docs/experiments.md ("The whole image beside the lesion crop").

Usage::

    python benchmarks/whole_beside_crop.py --folds 0 1 2 3 4 --crop checkpoints/auto_f{K}/best.pt [checkpoints/auto_f{K}_s1/best.pt] \\
        --whole checkpoints/whole_f{K}/best.pt [checkpoints/whole_f{K}_s1/best.pt] --seg checkpoints/seg_f{fold}_bal/best.pt \\
        --fold-column data/busi_all_f5.csv [--site data/breast.csv --site-segmenter checkpoints/seg_avg5/best.pt] \\
        [--scores this.npz] [--against control.npz]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch

from breastai.core.keys import Keys
from breastai.data.frames import read_samples
from breastai.engine.auto_outline import outlined_log_odds
from breastai.engine.ensemble import fit_combiner
from breastai.engine.run import run_splits
from breastai.engine.scoring import members_log_odds, row_names
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.outliner import Outliner
from breastai.reporting.auc_compare import paired_auc_difference_ci
from breastai.reporting.levels import unscored_floor
from breastai.reporting.metrics import bootstrap_auc_ci, ece, roc_auc

DEV = torch.device("cpu")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def scores(crop: np.ndarray, whole: np.ndarray, found: np.ndarray, fit: tuple | None, fallback: bool,
           n_crop: int = 1) -> np.ndarray:
    """Per-image log-odds: the crop alone (``fit`` None) or ``s * mean(crop members, whole members) + b``
    (``fit`` = ``(s, b)``, scalars or one per image; ``crop`` the ``n_crop`` crop members' mean;
    ``whole`` (n,) or (n, k)); where nothing is found the whole-image members' mean (``fallback``) or
    the unscored floor (probability about 0)."""
    w = whole.reshape(len(crop), -1)
    z = crop.copy() if fit is None else fit[0] * (n_crop * crop + w.sum(1)) / (n_crop + w.shape[1]) + fit[1]
    return np.where(found, z, w.mean(1) if fallback else unscored_floor(z[found]))


def summarise(y: np.ndarray, z: np.ndarray, n_boot: int) -> dict[str, float]:
    p = sigmoid(z)
    lo, hi = bootstrap_auc_ci(y, z, n_boot)
    return {"auc": round(roc_auc(y, z), 4), "ci": [round(lo, 4), round(hi, 4)], "ece": round(ece(y, p), 4)}


def paired_gain(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same images, with a paired percentile bootstrap CI."""
    d, lo, hi = paired_auc_difference_ci(y, a, b, n_boot)
    return {"gain": round(d, 4), "ci": [round(lo, 4), round(hi, 4)]}


def _mean_and_first(z: np.ndarray) -> np.ndarray:
    """A lesion's crop members (L, nc): their mean, and the first member alone."""
    return np.column_stack([z.mean(1), z[:, 0]])


def _fit(crop: np.ndarray, whole: np.ndarray, y: np.ndarray, found: np.ndarray, nc: int) -> tuple[float, float]:
    """``(s, b)`` of ``breastai ensemble --combine mean`` over ``nc`` crop members (``crop`` their mean) and
    the whole-image members, on the rows ``found``."""
    # combine="mean" ties the weights at s/m each: the crop mean counted nc times is the members' sum
    ws, b = fit_combiner(np.column_stack([np.tile(crop[:, None], nc), whole])[found], y[found], "mean")
    return float((nc + whole.shape[1]) * ws[0]), float(b)


def fold_of(path: Path) -> dict[str, int]:
    with open(path, newline="") as f:
        return {r["case_id"]: int(r["fold"]) for r in csv.DictReader(f)}


def run_fold(k: int, a: argparse.Namespace, folds: dict[str, int], segs: dict[int, Outliner]) -> dict:
    crops = [load_checkpoint(c.replace("{K}", str(k))) for c in a.crop]
    wholes = [load_checkpoint(w.replace("{K}", str(k))) for w in a.whole]
    cfg = crops[0].config
    records = read_samples(cfg["data"]["datalist"], cfg["data"], list(cfg["data"]["classes"]))
    split = run_splits(cfg, records)[0]
    names = row_names(cfg["data"]["datalist"], records, cfg["data"].get("reader_options"))

    def seg(j: int) -> Outliner:
        if j not in segs:
            path = a.seg.replace("{fold}", str(j))
            segs[j] = Outliner(load_checkpoint(path), DEV, path)
        return segs[j]

    out = {}
    for part in ("val", "test"):
        idx = list(split[part])
        rows = [records[j] for j in idx]
        nm = [names[j] for j in idx]
        outl = [seg(k if part == "test" else folds[str(r[Keys.CASE_ID])]) for r in rows]
        # a lesion's crop members on one outline, averaged (and the first alone); the image's the
        # highest over its lesions
        c, found = outlined_log_odds(crops, rows, outl, DEV, nm, per_lesion=_mean_and_first)
        w, _ = members_log_odds(wholes, [{**r, Keys.MASK: None} for r in rows], DEV, names=nm)
        t, _ = members_log_odds(crops, rows, DEV, names=nm)  # on the traced outlines
        y = np.array([crops[0].classes.index(r[Keys.LABEL]) for r in rows])
        out[part] = {"crop": c[:, 0], "crop1": c[:, 1], "whole": w, "traced": t.mean(1), "found": found, "y": y,
                     "case_id": [str(r[Keys.CASE_ID]) for r in rows]}
    v = out["val"]
    nc = len(crops)
    out["fit"] = _fit(v["crop"], v["whole"], v["y"], v["found"], nc)
    out["fit_traced"] = _fit(v["traced"], v["whole"], v["y"], np.ones(len(v["y"]), bool), nc)
    out["fit_first"] = _fit(v["crop1"], v["whole"], v["y"], v["found"], 1)
    logging.info("fold %d: fit on automatic outlines s=%.3f b=%.3f (%d of %d validation images found); "
                 "on traced s=%.3f b=%.3f", k, *out["fit"], int(v["found"].sum()), len(v["y"]), *out["fit_traced"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--crop", nargs="+", default=["checkpoints/auto_f{K}/best.pt"],
                    help="one or more crop members (a lesion's are averaged on its one outline)")
    ap.add_argument("--whole", nargs="+", default=["checkpoints/whole_f{K}/best.pt"],
                    help="one or more whole-image members (their calibrated log-odds enter the mean)")
    ap.add_argument("--seg", default="checkpoints/seg_f{fold}_bal/best.pt")
    ap.add_argument("--fold-column", type=Path, default=Path("data/busi_all_f5.csv"))
    ap.add_argument("--site", type=Path)
    ap.add_argument("--site-segmenter")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--scores", type=Path, help="write the combination's per-image log-odds here (.npz)")
    ap.add_argument("--against", type=Path,
                    help="another run's --scores file (same images): the paired gain of this combination over it")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    folds, segs = fold_of(a.fold_column), {}
    per = {k: run_fold(k, a, folds, segs) for k in a.folds}
    te = {key: np.concatenate([per[k]["test"][key] for k in a.folds])
          for key in ("crop", "crop1", "whole", "found", "y")}
    fits = {key: np.concatenate([[per[k][key]] * len(per[k]["test"]["y"]) for k in a.folds])
            for key in ("fit", "fit_traced", "fit_first")}

    nc = len(a.crop)

    def combo(fitkey: str, fallback: bool, crop: str = "crop", n: int = nc) -> np.ndarray:
        return scores(te[crop], te["whole"], te["found"], (fits[fitkey][:, 0], fits[fitkey][:, 1]), fallback, n)

    y = te["y"]
    rows = {
        "crop": scores(te["crop"], te["whole"], te["found"], None, False),
        "whole": te["whole"][:, 0],
        **({"whole_mean": te["whole"].mean(1)} if te["whole"].shape[1] > 1 else {}),
        "both": combo("fit", True),
        "both_no_fallback": combo("fit", False),
        "both_traced_fit": combo("fit_traced", True),
        **({"crop_first": scores(te["crop1"], te["whole"], te["found"], None, False),
            "both_first_crop": combo("fit_first", True, "crop1", 1)} if nc > 1 else {}),
    }
    report = {"busi": {"n": int(len(y)), "n_malignant": int(y.sum()), "no_lesion_found": int((~te["found"]).sum()),
                       "no_lesion_found_malignant": int((~te["found"] & (y == 1)).sum()),
                       "fits": {k: {"automatic": per[k]["fit"], "traced": per[k]["fit_traced"]} for k in a.folds},
                       **{name: summarise(y, z, a.n_boot) for name, z in rows.items()},
                       "both_minus_whole": paired_gain(y, rows["both"], rows.get("whole_mean", rows["whole"]), a.n_boot),
                       "both_minus_crop": paired_gain(y, rows["both"], rows["crop"], a.n_boot),
                       **({"both_minus_both_first_crop": paired_gain(y, rows["both"], rows["both_first_crop"], a.n_boot)}
                          if nc > 1 else {})}}
    print(json.dumps(report["busi"], indent=1))
    saved = {"busi_y": y, "busi_both": rows["both"]}

    if a.site:
        report["site"], saved["site_y"], saved["site_both"] = site_report(a, per)
        print(json.dumps(report["site"], indent=1))
    if a.scores:
        np.savez(a.scores, **saved)
    if a.against:
        report["against"] = against(saved, dict(np.load(a.against)), a.n_boot)
        print(json.dumps(report["against"], indent=1))
    if a.out:
        a.out.write_text(json.dumps(report, indent=1))


def against(this: dict[str, np.ndarray], other: dict[str, np.ndarray], n_boot: int) -> dict:
    """This combination against another run's on the same images: BUSI's pooled paired gain with its
    bootstrap CI, and the site's per-fold AUC differences with their mean."""
    if not np.array_equal(this["busi_y"], other["busi_y"]):
        raise SystemExit("--against: the two runs did not score the same BUSI images")
    out = {"busi": paired_gain(this["busi_y"], this["busi_both"], other["busi_both"], n_boot)}
    if "site_both" in this and "site_both" in other:
        ys = this["site_y"]
        d = [roc_auc(ys, this["site_both"][:, i]) - roc_auc(ys, other["site_both"][:, i])
             for i in range(this["site_both"].shape[1])]
        out["site"] = {"per_fold": [round(x, 4) for x in d], "mean": round(float(np.mean(d)), 4)}
    return out


def site_report(a: argparse.Namespace, per: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    records = read_samples(a.site, {}, ["benign", "malignant"])
    names = row_names(a.site, records, None)
    outliner = Outliner(load_checkpoint(a.site_segmenter), DEV, a.site_segmenter)
    nc = len(a.crop)
    crops = [load_checkpoint(c.replace("{K}", str(k))) for k in a.folds for c in a.crop]
    wholes = [load_checkpoint(w.replace("{K}", str(k))) for k in a.folds for w in a.whole]
    nf = len(a.folds)  # columns: each fold's crop members' mean, then each fold's first crop alone
    c, found = outlined_log_odds(crops, records, [outliner] * len(records), DEV, names,
                                 per_lesion=lambda z: np.column_stack([z.reshape(len(z), nf, nc).mean(2),
                                                                       z.reshape(len(z), nf, nc)[:, :, 0]]))
    w, _ = members_log_odds(wholes, [{**r, Keys.MASK: None} for r in records], DEV, names=names)
    w = w.reshape(len(records), len(a.folds), len(a.whole))
    y = np.array([crops[0].classes.index(r[Keys.LABEL]) for r in records])
    out: dict = {"n": int(len(y)), "no_lesion_found": int((~found).sum()), "per_fold": {}}
    both = np.zeros((len(y), len(a.folds)))
    for i, k in enumerate(a.folds):
        fit = per[k]["fit"]
        rows = {"crop": scores(c[:, i], w[:, i], found, None, False), "whole": w[:, i].mean(1),
                "both": scores(c[:, i], w[:, i], found, fit, True, nc),
                "both_no_fallback": scores(c[:, i], w[:, i], found, fit, False, nc),
                "both_first_crop": scores(c[:, nf + i], w[:, i], found, per[k]["fit_first"], True)}
        out["per_fold"][k] = {name: summarise(y, zz, a.n_boot) for name, zz in rows.items()}
        both[:, i] = rows["both"]
    for name in ("crop", "whole", "both", "both_no_fallback", "both_first_crop"):
        out[f"mean_{name}"] = {m: round(float(np.mean([out["per_fold"][k][name][m] for k in a.folds])), 4)
                               for m in ("auc", "ece")}
    return out, y, both


if __name__ == "__main__":
    main()
