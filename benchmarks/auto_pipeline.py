"""The automatic pipeline against traced outlines, boxes and the whole-image model, on held-out images.

Cross-validated (``--seg-run`` and ``--cls-run``: two ``--folds K`` runs made on the same fixed
folds): every held-out image of fold k is outlined by fold k's segmenter and scored by fold k's
classifier. Or one pair (``--segmenter`` and ``--classifier``) on every row of ``--data``: a site
that neither model saw.

Per image, in the original image geometry: Dice, IoU and HD95 of the union of the found lesions
against the traced mask (a lesion image where nothing was found is Dice 0 and "missed"); the
segmenter's lesion-presence probability (AUC: lesion against normal images, where the data hold
normal images). Malignancy over the lesion images (benign against malignant), by the rule written
in docs/experiments.md before the runs: the automatic pipeline's image score is the highest
probability over its found lesions, 0 where none was found; beside it the same classifier given
the traced mask, and given the traced mask's bounding box. The automatic score is
:func:`breastai.engine.auto_outline.score_outlined`'s, the rule ``breastai evaluate --auto-outline`` applies; and ``--whole-run`` (a whole-image
model's run on the same folds) if given. Sensitivity and specificity are at each classifier's own
threshold; ECE over 10 bins.

Usage::

    python benchmarks/auto_pipeline.py --data data/busi_all_f5.csv --seg-run checkpoints/seg_f5 \\
        --cls-run checkpoints/seg_cls_f5 [--whole-run checkpoints/whole_f5] [--out auto.json]
    python benchmarks/auto_pipeline.py --data data/breast.csv --segmenter checkpoints/seg_busi_all/best.pt \\
        --classifier checkpoints/xs_default_s0/fold0/best.pt [--classifier ...] [--out auto_breast.json]
    python benchmarks/auto_pipeline.py --pool fold0.json fold1.json     # one summary over several --out files
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.data.datalist import read_datalist  # noqa: E402
from breastai.data.readers.masks import LesionBox, load_mask  # noqa: E402
from breastai.engine.auto_outline import score_outlined  # noqa: E402
from breastai.inference.predictor import Predictor  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.models.outliner import Outliner  # noqa: E402
from breastai.reporting.metrics import binary_metrics, bootstrap_auc_ci, ece, roc_auc  # noqa: E402
from breastai.reporting.segmentation import mask_metrics, segmentation_summary  # noqa: E402

MALIGNANT = "malignant"


def _traced(rec: dict) -> np.ndarray:
    """The row's traced mask on the stored image (union of its files; empty for a normal image)."""
    m = load_mask(rec["mask"]) if rec.get("mask") else None
    return np.zeros((1, 1), bool) if m is None else np.asarray(m) > 0


def _image_scores(records: list[dict], paths: list[str]) -> tuple[dict[str, float], dict[str, bool]]:
    """Per source image (one record each: a traced outline or a box): its probability and whether it
    was called malignant."""
    return ({r["_src"]: float(r["probability"]) for r in records},
            {r["_src"]: r.get("label") == MALIGNANT for r in records})


def _predict(pred: Predictor, paths: list[str], masks: list | None = None) -> list[dict]:
    out = []
    for i, p in enumerate(paths):  # one call per image: a record says which image it came from
        for r in pred.predict([p], masks=None if masks is None else [masks[i]]):
            if r.get("error"):
                raise RuntimeError(r["error"])
            out.append({**r, "_src": p})
    return out


def _outliner(seg_path: str, flip: str | None) -> Outliner:
    """The segmenter, its mirror-image averaging switched as asked (None: as its checkpoint says)."""
    outliner = Outliner.from_checkpoint(seg_path)
    if flip is not None:
        outliner.flip = flip
    return outliner


def score_part(rows: list[dict], seg_path: str | None, cls_paths: dict[str, str], measure: bool = True,
               outline_as: tuple[str, ...] = ("outline",), seg_flip: str | None = None) -> list[dict]:
    """Per-image results of one part: segmentation figures (unless ``measure`` is False) and each mode's
    malignancy score (the automatic one once per ``outline_as``: ``p_automatic``, ``p_automatic_box``)."""
    paths = [str(r["image"]) for r in rows]
    truth = [_traced(r) for r in rows]
    out = [{"case_id": r["case_id"], "label": r["label"], "has_lesion": bool(t.any())} for r, t in zip(rows, truth)]
    if seg_path is not None and measure:
        outliner = _outliner(seg_path, seg_flip)
        t0 = time.time()
        for o, p, t in zip(out, paths, truth):
            image, meta = outliner.read(p)
            found = outliner.outline(image, meta, p)
            union = np.zeros(image.shape[:2], bool)
            for les in found.lesions:
                union |= les.mask
            o.update(presence_probability=float(found.presence), lesion_score=float(found.score),
                     lesion_found=bool(found.lesions),
                     n_lesions=len(found.lesions), **mask_metrics(union, t if t.shape == union.shape else np.zeros_like(union)))
        print(f"  outlined {len(paths)} images in {time.time() - t0:.0f} s", flush=True)
    lesion = [i for i, o in enumerate(out) if o["has_lesion"] and o["label"] in ("benign", MALIGNANT)]
    lp = [paths[i] for i in lesion]
    for mode, path in cls_paths.items():
        if mode == "whole":
            recs = _predict(Predictor.from_checkpoint(path), lp)
            modes = {"whole": recs}
        else:
            plain = Predictor.from_checkpoint(path)
            modes = {"traced": _predict(plain, lp, [rows[i]["mask"] for i in lesion]),
                     "box": _predict(plain, lp, [LesionBox.around(truth[i]) for i in lesion])}
            if seg_path is not None:  # evaluate --auto-outline's own rule (engine.auto_outline)
                ckpt = load_checkpoint(path)
                for given in outline_as:
                    _, probs, _, _ = score_outlined(ckpt, [rows[i] for i in lesion], _outliner(seg_path, seg_flip),
                                                    True, torch.device("cpu"), 0, [str(rows[i]["case_id"]) for i in lesion],
                                                    outline_as=given)
                    mode = "automatic" if given == "outline" else f"automatic_{given}"
                    for i, p in zip(lesion, probs):
                        out[i][f"p_{mode}"], out[i][f"called_{mode}"] = float(p), bool(p >= ckpt.threshold)
        for name, recs in modes.items():
            prob, called = _image_scores(recs, lp)
            for i, p in zip(lesion, lp):
                out[i][f"p_{name}"], out[i][f"called_{name}"] = prob[p], called[p]
    return out


def malignancy(rows: list[dict], mode: str, n_boot: int = 2000) -> dict:
    rows = [r for r in rows if f"p_{mode}" in r]
    y = np.array([int(r["label"] == MALIGNANT) for r in rows])
    p = np.array([r[f"p_{mode}"] for r in rows])
    called = np.array([r[f"called_{mode}"] for r in rows], float)
    lo, hi = bootstrap_auc_ci(y, p, n_boot=n_boot)
    m = binary_metrics(y, called, 0.5)
    return {"n": len(rows), "n_malignant": int(y.sum()), "auc": roc_auc(y, p), "auc_ci": [lo, hi],
            "sensitivity": m["sensitivity"], "specificity": m["specificity"], "ece": ece(y, p)}


DICE_EDGES = (0.5, 0.8, 0.9)  # bands: Dice 0, (0, 0.5), [0.5, 0.8), [0.8, 0.9), [0.9, 1]


def by_dice(rows: list[dict]) -> list[dict]:
    """The automatic and traced AUC of the lesion images, split by the Dice of their automatic outline.

    The first band is Dice 0 (nothing found, or nothing in the right place). Where the outline is
    good and the automatic score still trails the traced one, the classifier reads something of
    the reader's tracing that a good automatic outline does not have.
    """
    rows = [r for r in rows if "p_automatic" in r and "p_traced" in r and r.get("dice") is not None]
    names = ["0", *[f"{a}-{b}" for a, b in zip((0.0, *DICE_EDGES), (*DICE_EDGES, 1.0))]]
    band = [0 if r["dice"] == 0 else 1 + int(np.searchsorted(DICE_EDGES, r["dice"], side="right")) for r in rows]
    out = []
    for k, name in enumerate(names):
        part = [r for r, b in zip(rows, band) if b == k]
        y = np.array([int(r["label"] == MALIGNANT) for r in part])
        entry = {"dice": name, "n": len(part), "n_malignant": int(y.sum())}
        if 0 < y.sum() < len(y):
            entry.update(automatic=roc_auc(y, [r["p_automatic"] for r in part]),
                         traced=roc_auc(y, [r["p_traced"] for r in part]))
        out.append(entry)
    return out


def summarise(rows: list[dict]) -> dict:
    """Segmentation figures (where the rows carry them) and each scoring mode's malignancy figures."""
    s: dict = {}
    if "presence_probability" in rows[0]:
        s["segmentation"] = segmentation_summary(rows, 2000)
        if any(not r["has_lesion"] for r in rows):  # lesion against normal images by the lesion score
            s["segmentation"]["lesion_score_auc"] = roc_auc([int(r["has_lesion"]) for r in rows],
                                                            [r["lesion_score"] for r in rows])
    for mode in ("automatic", "automatic_box", "traced", "box", "whole"):
        if any(f"p_{mode}" in r for r in rows):
            s[mode] = malignancy(rows, mode)
    if any("p_automatic" in r and "p_traced" in r for r in rows):
        s["by_outline_dice"] = by_dice(rows)
    if any("p_automatic" in r for r in rows):
        s["automatic"]["no_lesion_found"] = int(sum(1 for r in rows if "p_automatic" in r and not r.get("lesion_found")))
    return s


def pooled(files: list[Path]) -> list[dict]:
    """The per-image rows of several ``--out`` files (one pair each, e.g. one per fold), as one list."""
    rows: list[dict] = []
    for f in files:
        results = json.loads(f.read_text())["rows"]
        if len(results) != 1:
            raise SystemExit(f"{f}: holds {len(results)} result sets ({', '.join(results)}); pool files of one pair each")
        rows += next(iter(results.values()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="datalist (with a fold column for the cross-validated form)")
    ap.add_argument("--seg-run", type=Path, help="the segmenter's --folds K run")
    ap.add_argument("--cls-run", type=Path, help="the classifier's --folds K run, same folds")
    ap.add_argument("--whole-run", type=Path, help="a whole-image classifier's --folds K run, same folds")
    ap.add_argument("--segmenter", help="one segmenter checkpoint (the single form)")
    ap.add_argument("--classifier", action="append", default=[], help="classifier checkpoint(s) (the single form)")
    ap.add_argument("--no-segmenter", action="store_true", help="the single form without a segmenter")
    ap.add_argument("--outline-as", nargs="+", default=["outline"], choices=["outline", "box"],
                    help="what of each found lesion the classifier is given (several: each is scored)")
    ap.add_argument("--seg-flip", choices=["on", "off", "mask"],
                    help="the segmenter's mirror-image averaging: on (mask and presence), mask (the mask alone) or off (default: as its checkpoint says)")
    ap.add_argument("--seg-only", action="store_true", help="measure the outlines only (no classifier)")
    ap.add_argument("--out", type=Path, help="write the per-image rows and the summary as JSON")
    ap.add_argument("--pool", type=Path, nargs="+", help="summarise the rows of earlier --out files together (e.g. one per fold)")
    args = ap.parse_args()
    if args.pool:
        print(json.dumps(summarise(pooled(args.pool)), indent=1, default=float))
        return
    if args.data is None:
        ap.error("--data is required unless --pool is given")
    logging.getLogger("breastai").setLevel(logging.WARNING)
    records = read_datalist(args.data, classes=None)
    flip = None if args.seg_flip is None else {"on": "both", "off": "none", "mask": "mask"}[args.seg_flip]
    results: dict[str, list[dict]] = {}
    if args.seg_run is not None:
        folds = sorted({int(r["fold"]) for r in records})
        rows: list[dict] = []
        for k in folds:
            part = [r for r in records if int(r["fold"]) == k]
            print(f"fold {k}: {len(part)} images", flush=True)
            cls = {} if args.seg_only else {"crop": str(args.cls_run / f"fold{k}" / "best.pt")}
            if args.whole_run is not None and not args.seg_only:
                cls["whole"] = str(args.whole_run / f"fold{k}" / "best.pt")
            rows += [{**r, "fold": k} for r in score_part(part, str(args.seg_run / f"fold{k}" / "best.pt"), cls,
                                                          outline_as=tuple(args.outline_as), seg_flip=flip)]
        results["cv"] = rows
    else:
        seg = None if args.no_segmenter else args.segmenter
        if args.seg_only:
            results["segmenter"] = score_part(records, seg, {}, seg_flip=flip)
        for i, c in enumerate([] if args.seg_only else args.classifier):
            print(f"classifier {c}", flush=True)
            results[c] = score_part(records, seg, {"crop": c}, measure=i == 0, outline_as=tuple(args.outline_as),
                                    seg_flip=flip)
            if i and seg is not None:  # the outlines are the segmenter's alone: measured once
                for a, b in zip(results[c], results[args.classifier[0]]):
                    a.update({k: v for k, v in b.items() if k in ("presence_probability", "lesion_found", "n_lesions",
                                                                  "dice", "iou", "hd95")})
    summary = {}
    for name, rows in results.items():
        summary[name] = summarise(rows)
        print(name)
        print(json.dumps(summary[name], indent=1, default=float))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "rows": results}, indent=1, default=float))


if __name__ == "__main__":
    main()
