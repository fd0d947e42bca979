"""Does the saliency map look at the lesion? Pointing game and mass share on CV held-out images.

For a cross-validation run folder (``DIR/fold{i}/best.pt`` and ``DIR/cv_summary.json`` with its
out-of-fold predictions), every malignant held-out image is explained by ITS fold's checkpoint
(never a model that saw it in training); the map is taken in the original image geometry and
compared with the lesion mask from the datalist:

- pointing game: the fraction of images whose saliency maximum lies inside the lesion mask;
- mass share: the fraction of the total saliency inside the mask, against the mask's area
  share of the image (a map blind to the lesion has mass share ~ area share).

    python benchmarks/saliency_pointing.py --cv-run runs/busi_whole_cv --data data/busi.csv --method gradcam++

Choices about the explanation itself (``--layer``, the target layer) are made with ``--part val``:
the same statistics on each fold's VALIDATION images (carved from its training part exactly as
in training, never the held-out fold), so the held-out figure stays untouched by the choice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from breastai.core.files import atomic_write_text  # noqa: E402
from breastai.data.datalist import read_datalist
from breastai.data.readers.masks import load_mask  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.inference.predictor import Predictor  # noqa: E402
from breastai.models.saliency import UPSAMPLING, peak_in_mask  # noqa: E402
from breastai.engine.cv import cv_splits, load_cv_summary  # noqa: E402


def pointing_stats(smap: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Pointing hit, saliency mass share inside ``mask`` and the mask's area share."""
    smap = np.clip(np.nan_to_num(np.asarray(smap, dtype=np.float64)), 0, None)
    mask = np.asarray(mask, dtype=bool)
    total = smap.sum()
    peak = np.unravel_index(int(np.argmax(smap)), smap.shape)
    # How far a miss lands, in lesion diameters: a miss just outside the outline (coarse map) and
    # one on the far side of the image (wrong evidence) call for different remedies.
    ys, xs = np.nonzero(mask)
    if total > 0 and ys.size and not mask[peak]:
        diameter = 2.0 * np.sqrt(ys.size / np.pi)
        miss = float(np.sqrt(np.min((ys - peak[0]) ** 2 + (xs - peak[1]) ** 2)) / diameter)
    else:
        miss = 0.0
    return {
        "hit": float(peak_in_mask(smap, mask)),
        "miss_distance": miss,
        "mass_share": float(smap[mask].sum() / total) if total > 0 else 0.0,
        "area_share": float(mask.mean()),
    }


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``hits / n`` (image sampling only; a second
    training run of the same recipe moves the pointing game by more, see the README)."""
    if n == 0:
        return 0.0, 0.0
    p, z2 = hits / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _cases(summary: dict, data: Path, part: str) -> dict[int, list[dict]]:
    """Per fold: the held-out predictions (``test``) or the fold's validation rows (``val``)."""
    folds = sorted({int(p["fold"]) for p in summary["oof_predictions"]})
    if part == "test":
        return {f: [p for p in summary["oof_predictions"] if int(p["fold"]) == f] for f in folds}
    cfg = summary["config"]
    classes = list(cfg["data"]["classes"])
    records = read_samples(data, cfg["data"], classes)
    splits = cv_splits(records, len(folds), cfg)
    return {f: [{"case_id": records[i]["case_id"], "label": classes.index(records[i]["label"])} for i in splits[f][1]]
            for f in folds}


def evaluate_run(cv_run: Path, data: Path, method: str, device: str = "cpu", limit: int | None = None,
                 part: str = "test", layer: str | None = None, upsample: str = "bicubic") -> dict:
    """Pointing game and mass share per fold and overall (see the module docstring)."""
    summary = load_cv_summary(cv_run)
    records = {r["case_id"]: r for r in read_datalist(data, require_label=False)}
    per_fold: dict[int, list[dict]] = {}
    missing = 0
    for fold, fold_cases in _cases(summary, data, part).items():
        pred = Predictor.from_checkpoint(cv_run / f"fold{fold}" / "best.pt", device=device)
        if layer:
            if layer not in dict(pred.model.named_modules()):
                raise SystemExit(f"--layer {layer!r} is not a module of {cv_run}/fold{fold}/best.pt")
            pred.model.target_layer_name = layer
        pred.set_saliency_upsample(upsample)
        malignant = pred.classes.index("malignant") if "malignant" in pred.classes else 1
        cases = [p for p in fold_cases if int(p["label"]) == malignant]
        rows = []
        for p in cases[: limit or None]:
            rec = records.get(str(p["case_id"]))
            if rec is None or not rec["mask"]:
                missing += 1
                continue
            out = pred.predict(rec["image"], masks=[rec["mask"]] if pred.crop_mode else None, saliency=method,
                               return_maps=True)[0]
            if out["error"]:
                print(f"skipped {p['case_id']}: {out['error']}", file=sys.stderr)
                missing += 1
                continue
            stats = pointing_stats(out["saliency_map"], load_mask(rec["mask"], out["saliency_map"].shape))
            rows.append({"case_id": p["case_id"], "fold": fold, "probability": out["probability"], **stats})
        per_fold[fold] = rows

    def agg(rows: list[dict]) -> dict:
        if not rows:
            return {"n": 0}
        hit = np.array([r["hit"] for r in rows])
        mass = np.array([r["mass_share"] for r in rows])
        area = np.array([r["area_share"] for r in rows])
        miss = np.array([r["miss_distance"] for r in rows if not r["hit"]])
        return {"n": len(rows), "hits": int(hit.sum()), "pointing_game": float(hit.mean()),
                "pointing_ci95": wilson_interval(int(hit.sum()), len(rows)), "mass_share": float(mass.mean()),
                "miss_within_quarter_diameter": float(np.mean(miss <= 0.25)) if miss.size else 0.0,
                "miss_median_distance": float(np.median(miss)) if miss.size else 0.0,
                "area_share": float(area.mean()), "mass_over_area": float(np.mean(mass / np.maximum(area, 1e-9)))}

    all_rows = [r for rows in per_fold.values() for r in rows]
    return {"cv_run": str(cv_run), "data": str(data), "method": method, "part": part, "layer": layer or "default",
            "upsample": upsample,
            "folds": {str(f): agg(rows) for f, rows in per_fold.items()}, "overall": agg(all_rows),
            "skipped": missing, "cases": all_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv-run", required=True, type=Path, help="CV run folder (fold{i}/best.pt, cv_summary.json)")
    ap.add_argument("--data", required=True, type=Path, help="the datalist of the CV run (masks are read from it)")
    ap.add_argument("--method", default="gradcam++", choices=["gradcam", "gradcam++", "occlusion"])
    ap.add_argument("--out", type=Path, help="JSON report (default: CV_RUN/saliency_pointing_METHOD.json)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", default="test", choices=["test", "val"],
                    help="held-out folds (report) or each fold's validation part (for choosing --layer)")
    ap.add_argument("--layer", help="saliency target layer (module name) instead of the model's registered one")
    ap.add_argument("--upsample", default="bicubic", choices=list(UPSAMPLING),
                    help="interpolation of the coarse Grad-CAM map to the input grid")
    ap.add_argument("--limit", type=int, default=0, help="at most this many malignant images per fold (0 = all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rep = evaluate_run(args.cv_run, args.data, args.method, args.device, args.limit or None, args.part, args.layer,
                       args.upsample)
    where = "held-out" if args.part == "test" else "validation"
    print(f"saliency localisation ({args.method}, layer {rep['layer']}, {args.upsample} map) on malignant {where} "
          f"images of {args.cv_run}")
    print(f"{'fold':<8}{'n':>5}{'pointing':>10}{'mass in mask':>14}{'mask area':>11}{'mass/area':>11}")
    for name, a in [*rep["folds"].items(), ("all", rep["overall"])]:
        if a["n"]:
            print(f"{name:<8}{a['n']:>5}{a['pointing_game']:>10.3f}{a['mass_share']:>14.3f}{a['area_share']:>11.3f}"
                  f"{a['mass_over_area']:>11.2f}")
    o = rep["overall"]
    if o["n"]:
        lo, hi = o["pointing_ci95"]
        print(f"pointing game {o['hits']} of {o['n']} = {o['pointing_game']:.3f} (95% CI {lo:.3f}-{hi:.3f}, images only)")
    if rep["skipped"]:
        print(f"{rep['skipped']} case(s) skipped (no mask or unreadable)")
    tag = args.method.replace("++", "pp") + ("" if args.part == "test" else "_val") + (f"_{args.layer}" if args.layer else "")
    tag += "" if args.upsample == "bicubic" else f"_{args.upsample}"
    out = args.out or args.cv_run / f"saliency_pointing_{tag}.json"
    rep["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(out, json.dumps(rep, indent=1))
    print(f"report: {out} ({rep['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
