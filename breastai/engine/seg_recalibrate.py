"""A segmenter's operating point at the user's own site (``breastai calibrate`` on a segmenter).

A segmenter's presence threshold is chosen in training so that a fraction q
(``seg.presence_sensitivity``) of its validation lesion images keep a found lesion. At another
site the scores move (another scanner, another reader's framing), so the same threshold misses
more lesions or finds more false ones there; and between missed and false lesions there is a
trade-off that only the site can settle (BUSI: 95 % of validation lesions kept gave 10 of 378
missed and 45 of 78 normal images given a lesion, 90 % gave 19 and 26; docs/experiments.md).
:func:`rethreshold_segmenter` re-chooses the threshold by the training rule
(:func:`~breastai.engine.seg_trainer.choose_presence_threshold`) on the site's own traced images
(lesion images and, where there are any, images without a lesion, given an empty mask), and
writes a new checkpoint: same weights, new threshold, and a
:class:`~breastai.models.calibration.Recalibration` entry (method ``presence_threshold``) saying
on how many images and which, with the found and false-lesion fractions before and after.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from breastai.core.distributed import resolve_device
from breastai.core.files import file_sha256
from breastai.data.frames import read_samples
from breastai.data.provenance import part_digests
from breastai.engine.recalibrate import TooFewCasesError, check_new_checkpoint, warn_seen_before
from breastai.engine.seg_ensemble import segment_records_any
from breastai.engine.seg_trainer import (MIN_LESION_IMAGES, check_seg_parts, choose_presence_threshold, lesion_free,
                                         score_segmentation)
from breastai.models.calibration import Recalibration
from breastai.models.checkpoint import CheckpointError, is_segmenter, package_versions, weights_digest
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint

__all__ = ["METHOD", "MIN_LESION_IMAGES", "rethreshold_segmenter"]

METHOD = "presence_threshold"


def _fractions(rows: list[dict], prefix: str) -> dict[str, float]:
    """Lesion images with a found lesion, images without one given a lesion (NaN when none), mean Dice."""
    les = [r for r in rows if r["has_lesion"]]
    free = [r for r in rows if not r["has_lesion"]]
    return {f"found_{prefix}": float(np.mean([r["lesion_found"] for r in les])),
            f"false_lesions_{prefix}": float(np.mean([r["lesion_found"] for r in free])) if free else float("nan"),
            f"dice_{prefix}": float(np.mean([r["dice"] for r in les]))}


def rethreshold_segmenter(checkpoint: str | Path, data: str | Path, out: str | Path, sensitivity: float | None = None,
                          device: str = "auto") -> Recalibration:
    """Re-choose a segmenter's presence threshold on local traced images and write the result to ``out``.

    Args:
        checkpoint: the segmenter's checkpoint (``best.pt`` of a segmentation run, or a segmenter ensemble).
        data: datalist of local images, each with its traced mask (an empty mask file for an image
            without a lesion); at least :data:`MIN_LESION_IMAGES` of them holding a lesion.
        out: the new checkpoint file (never the source).
        sensitivity: the fraction of the local lesion images that must keep a found lesion; default
            the segmenter's own ``seg.presence_sensitivity`` (as in training).
        device: auto, cpu or cuda.

    Returns:
        The recorded :class:`~breastai.models.calibration.Recalibration`.

    Raises:
        CheckpointError: the checkpoint is missing, corrupted, or not a segmenter's.
        DatalistError, RecordError: the datalist or one of its images is unusable (named).
        TooFewCasesError: fewer than :data:`MIN_LESION_IMAGES` local lesion images.
        ValueError: a row without a mask, ``sensitivity`` outside (0, 1), ``out`` the source or a folder.
    """
    out = check_new_checkpoint(out, checkpoint)
    ckpt = load_checkpoint(checkpoint)
    if not is_segmenter(ckpt):
        raise CheckpointError(f"{checkpoint}: not a segmenter's checkpoint (its model is {ckpt.model.name}); "
                              "a classifier is recalibrated without --lesion-sensitivity")
    cfg = ckpt.config
    q = float(cfg["seg"]["presence_sensitivity"]) if sensitivity is None else float(sensitivity)
    if not 0.0 < q < 1.0:
        raise ValueError(f"--lesion-sensitivity is a fraction in (0, 1), got {q:g}")
    records = read_samples(data, cfg["data"])
    check_seg_parts(records, {"val": np.arange(len(records))})
    free = lesion_free(records)
    n_lesion = int(len(free) - free.sum())
    if n_lesion < MIN_LESION_IMAGES:
        raise TooFewCasesError(f"datalist {data}: {n_lesion} image(s) with a traced lesion; a segmenter's threshold "
                               f"needs at least {MIN_LESION_IMAGES}")
    warn_seen_before(ckpt, records)
    dev = resolve_device(device)
    pred, temperature = segment_records_any(ckpt, records, dev)
    seg = {**cfg["seg"], "presence_sensitivity": q}
    threshold = choose_presence_threshold(pred, {**cfg, "seg": seg}, temperature)
    metrics = {**_fractions(score_segmentation(pred, cfg, temperature, ckpt.threshold), "before"),
               **_fractions(score_segmentation(pred, cfg, temperature, threshold), "after")}
    calibration = dict(ckpt.calibration)
    rec = Recalibration(
        method=METHOD, targets="", slope=1.0, intercept=0.0, before=calibration, after=dict(calibration),
        threshold_before=float(ckpt.threshold), threshold_after=float(threshold), threshold_method=f"sensitivity@{q:g}",
        n=len(records), n_per_class={"lesion": n_lesion, "no lesion": int(free.sum())},
        image_digests=part_digests(records), source_checkpoint=file_sha256(checkpoint),
        weights_digest=weights_digest(ckpt), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        breastai_version=package_versions()["breastai"], metrics=metrics)
    new = dataclasses.replace(ckpt, threshold=float(threshold), config={**cfg, "seg": seg},
                              recalibration=[*(ckpt.recalibration or []), rec])
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, new)
    return rec
