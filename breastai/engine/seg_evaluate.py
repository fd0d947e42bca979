"""``breastai evaluate`` of a segmentation checkpoint: its outlines and lesion presence on a datalist.

Each row is outlined as ``predict`` outlines a new image (:class:`~breastai.models.outliner.Outliner`:
the checkpoint's own preprocessing, flip averaging, presence threshold and lesion rules, the lesions
back on the image as stored) and the union of its found lesions is compared with the row's traced
mask there (:func:`breastai.engine.auto_outline.outline_row`): Dice, IoU and HD95 in pixels of the
stored image, a lesion image where nothing is found counting Dice 0 (``missed``). An image whose
traced mask is empty (BUSI's ``normal`` images) is lesion-free: lesion presence is measured as the
AUC of the presence probability between lesion and lesion-free images, and ``false_lesion_rate`` is
the share of lesion-free images given a lesion. Figures: :func:`~breastai.reporting.segmentation.segmentation_summary`.

This is how a user measures a segmenter at a new site (the training run's own figures are on its
validation and test parts): no malignancy label is needed, only the traced masks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from breastai.core.distributed import resolve_device
from breastai.core.files import atomic_write_csv, atomic_write_text
from breastai.core.keys import Keys
from breastai.data.frames import read_samples
from breastai.data.provenance import seen_before
from breastai.engine.auto_outline import outline_row
from breastai.engine.scoring import RecordError, row_names
from breastai.models.checkpoint import Checkpoint
from breastai.models.outliner import Outliner
from breastai.reporting.segmentation import segmentation_summary

__all__ = ["evaluate_segmenter", "COLUMNS"]

log = logging.getLogger("breastai")

COLUMNS = ["case_id", "label", "has_lesion", "presence_probability", "lesion_found", "n_lesions", "dice", "iou",
           "hd95"]


def evaluate_segmenter(ckpt: Checkpoint, checkpoint: str | Path, data: str | Path, out: str | Path,
                       device: str = "auto", n_boot: int | None = None) -> dict[str, Any]:
    """Outline every row of ``data`` with the segmenter ``ckpt`` and measure it against the traced masks.

    Writes ``metrics.json`` (``task`` ``segmentation``, the summary, the presence threshold),
    ``predictions.csv`` (one row per image, :data:`COLUMNS`) and, with lesion and lesion-free images
    both present, ``roc.png`` of lesion presence; nothing when a row cannot be read or has no mask.

    Args:
        ckpt: the loaded segmentation checkpoint, ``checkpoint`` its path (for messages).
        checkpoint: see ``ckpt``.
        data: a datalist whose rows all have a traced mask (an empty one for a lesion-free image);
            a label is optional and, when given, one of the checkpoint's classes.
        out: the report folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        n_boot: bootstrap resamples of the presence AUC's CI (default: the checkpoint's ``eval.bootstrap``).

    Raises:
        RecordError: a row without a mask, or whose image or mask cannot be read (naming the row).
    """
    out = Path(out)
    cfg = ckpt.config
    records = read_samples(data, cfg["data"], list(cfg["data"]["classes"]), require_label=False)
    names = row_names(data, records, cfg["data"].get("reader_options"))
    unmasked = [n for r, n in zip(records, names) if not r.get(Keys.MASK)]
    if unmasked:
        raise RecordError(f"{unmasked[0]}: no traced mask: evaluating a segmenter needs every row's mask (an empty "
                          f"mask for an image without a lesion); {len(unmasked)} of {len(records)} row(s) have none")
    seen = seen_before(ckpt.seen_images, records)
    if seen["train"] or seen["val"]:
        log.warning("warning: %d of the %d images are identical to images this segmenter was trained on and %d to its "
                    "validation images: these figures are not an independent test", seen["train"], len(records),
                    seen["val"])
    outliner = Outliner(ckpt, resolve_device(device), str(checkpoint))
    rows = []
    for rec, name in zip(records, names):
        _, info = outline_row(rec, outliner, name)
        rows.append({"case_id": str(rec[Keys.CASE_ID]), "label": rec.get(Keys.LABEL) or "", **info})
    nb = int(n_boot if n_boot is not None else cfg.get("eval", {}).get("bootstrap", 2000))
    report = {"task": "segmentation", "checkpoint": str(checkpoint), "data": str(data),
              "presence_threshold": float(outliner.threshold), "n_seen_in_training": seen["train"],
              "n_seen_in_validation": seen["val"], **segmentation_summary(rows, nb)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1, default=float))
    atomic_write_csv(out / "predictions.csv", COLUMNS, [{k: r.get(k) for k in COLUMNS} for r in rows], exact=True)
    if report["presence_auc"] is not None:
        from breastai.reporting import plots

        y = np.array([int(r["has_lesion"]) for r in rows])
        plots.plot_roc(y, np.array([r["presence_probability"] for r in rows]), out / "roc.png",
                       title=f"Lesion presence (AUC {report['presence_auc']:.3f})")
    return report
