"""Out-of-fold predicted outlines: each lesion image outlined by the fold segmenter that never trained on it.

For training a classifier on the kind of outline it gets at inference (docs/experiments.md,
"Training the classifier on predicted outlines"). Reads a datalist with the ``fold`` column the
segmenter's ``--folds K`` run used, outlines every lesion row of fold k with
``SEG_RUN/fold{k}/best.pt`` on the image as stored, writes the union of the found lesions as a PNG
mask, and writes a datalist of the same rows with ``mask`` pointing at those PNGs (the ``fold`` column
emptied). Rows where no lesion was found are left out and counted; normal rows are left out.

Usage::

    python benchmarks/oof_outlines.py --data data/busi_all_f5.csv --seg-run checkpoints/seg_f5 \\
        --masks data/busi_oof_outlines --out data/busi_auto.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.files import atomic_write_bytes, atomic_write_csv  # noqa: E402
from breastai.data.datalist import read_datalist  # noqa: E402
from breastai.models.outliner import Outliner  # noqa: E402


def _png(mask: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the segmenter run's datalist, with its fold column")
    ap.add_argument("--seg-run", required=True, type=Path)
    ap.add_argument("--masks", required=True, type=Path, help="folder for the outline PNGs")
    ap.add_argument("--out", required=True, type=Path, help="the datalist to write")
    args = ap.parse_args()
    raw = {r["case_id"]: r for r in csv.DictReader(open(args.data, newline=""))}
    records = read_datalist(args.data, classes=None)
    args.masks.mkdir(parents=True, exist_ok=True)
    rows, missed = [], []
    for k in sorted({int(r["fold"]) for r in records}):
        outliner = Outliner.from_checkpoint(args.seg_run / f"fold{k}" / "best.pt")
        part = [r for r in records if int(r["fold"]) == k and r["label"] != "normal"]
        for r in part:
            image, meta = outliner.read(r["image"])
            found = outliner.outline(image, meta, str(r["image"]))
            if not found.lesions:
                missed.append(r["case_id"])
                continue
            union = np.zeros(image.shape[:2], bool)
            for les in found.lesions:
                union |= les.mask
            path = args.masks / f"{r['case_id']}_auto.png"
            atomic_write_bytes(path, _png(union))
            row = dict(raw[r["case_id"]])
            row.update(image=str(Path(r["image"]).resolve()), mask=str(path.resolve()), fold="")
            rows.append(row)
        print(f"fold {k}: {len(part)} lesion images outlined", flush=True)
    atomic_write_csv(args.out, list(next(iter(raw.values()))), rows)
    print(f"{len(rows)} rows written to {args.out}; no lesion found in {len(missed)}: {', '.join(missed)}")


if __name__ == "__main__":
    main()
