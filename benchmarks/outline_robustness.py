"""How a cross-validation run's AUC depends on the lesion outline it is given.

Each fold's ``best.pt`` scores its held-out part (or its validation part) once with the traced
masks of the datalist and once with each stand-in for them: the mask dilated or eroded by about
5 % of the lesion's size (what two careful annotators differ by), its convex hull (concavities,
lobulation and spiculation gone), the ellipse of its second moments (only position, size,
elongation and orientation left) and its bounding box (what a quick user draws). A model that
reads the outline well and the image poorly falls with the last three; radiomics from the mask
fall with them too.

Usage::

    PYTHONPATH=. python benchmarks/outline_robustness.py --cv-run checkpoints/busi_crop_mgrey_s0_cv \
        [--part val] [--variants traced,dilate,erode,hull,ellipse,box] [--threads 2] [--out FILE]

Stand-in masks are written to a temporary folder (never next to the data) and removed after.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.data.readers.masks import load_mask  # noqa: E402
from breastai.data.augment import coarse_outline  # noqa: E402
from breastai.reporting.metrics import roc_auc  # noqa: E402
from breastai.engine.cv import cv_splits, load_cv_summary  # noqa: E402
from breastai.engine.scoring import predict_records

VARIANTS = ("traced", "dilate", "erode", "hull", "ellipse", "box")


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy**2 + xx**2 <= r * r


def stand_in(mask: np.ndarray, kind: str) -> np.ndarray:
    """The ``kind`` stand-in (see the module docstring) for a boolean (H, W) lesion mask."""
    if kind == "traced":
        return mask
    r = max(1, int(round(0.05 * np.sqrt(mask.sum()))))
    if kind == "dilate":
        return ndimage.binary_dilation(mask, _disk(r))
    if kind == "erode":
        eroded = ndimage.binary_erosion(mask, _disk(r))
        return eroded if eroded.any() else mask
    if kind == "hull":
        from skimage.morphology import convex_hull_image

        return convex_hull_image(mask)
    if kind in ("ellipse", "box"):
        return coarse_outline(mask.astype(np.float32), kind) > 0
    raise ValueError(f"unknown outline variant {kind!r}; choose from {', '.join(VARIANTS)}")


def _with_masks(records: list[dict], kind: str, folder: Path) -> list[dict]:
    if kind == "traced":
        return records
    out = []
    for r in records:
        f = folder / kind / f"{r['case_id']}.png"
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            mask = load_mask(r["mask"])
            Image.fromarray(stand_in(mask, kind).astype(np.uint8) * 255).save(f)
        out.append({**r, "mask": [str(f)]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cv-run", required=True, type=Path)
    ap.add_argument("--part", choices=("test", "val"), default="test", help="held-out (default) or validation parts")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.variants.split(",") if k.strip()]
    for k in kinds:
        if k not in VARIANTS:
            ap.error(f"unknown variant {k!r}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    cfg = load_cv_summary(args.cv_run)["config"]
    records = read_samples(cfg["data"]["datalist"], cfg["data"])
    folds: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="outline_") as tmp:
        for i, (_, va, te) in enumerate(cv_splits(records, int(cfg["train"]["folds"]), cfg)):
            state = load_checkpoint(args.cv_run / f"fold{i}" / "best.pt")
            part = [records[j] for j in (va if args.part == "val" else te)]
            for k in kinds:
                p = predict_records(state, _with_masks(part, k, Path(tmp)), torch.device("cpu"))
                folds[k].append(roc_auc(p["label"], p["logit"]))
            print(f"fold {i}: " + "  ".join(f"{k} {folds[k][-1]:.3f}" for k in kinds), flush=True)
    print(f"{args.cv_run.name}, {args.part} parts: mean AUC over folds ± sd")
    for k in kinds:
        print(f"  {k:8s} {np.mean(folds[k]):.3f} ± {np.std(folds[k], ddof=1):.3f}")
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.cv_run), "part": args.part, "fold_auc": folds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
