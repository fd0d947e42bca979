"""Segmenters averaged: ``breastai ensemble`` over segmentation runs (the fold models of a recipe, as nnU-Net infers).

Segmenters trained the same way on different folds outline another site's lesions differently
(three BUSI folds at BrEaST: Dice 0.64 to 0.69, 14 to 37 of 252 lesions missed); their average
outlines better than any of them (docs/results.md). An ensemble of segmenters is a checkpoint
whose members are segmenter checkpoints, nothing fitted:

* its mask probabilities and presence probability are the means of the members' (the image
  preprocessed once by their shared preset, each presence through its member's own calibration;
  :class:`~breastai.models.outliner.Outliner`),
* its lesion rules are the members' (they must agree), its presence threshold is the median of the
  members' thresholds (no image the ensemble has seen can choose it without bias: every member's
  validation images are other members' training images; ``breastai calibrate --lesion-sensitivity``
  chooses it on a site's own traced images). Members that share their validation part (seeds of
  one split, ``data.split_seed`` fixed) are the exception: :func:`shared_validation_rows` finds that
  part in the training datalist and the ensemble's own threshold is chosen there, by the training
  rule (``--threshold-from``): averaging pulls a doubtful image's presence toward the middle, so
  the median of thresholds chosen for single members misses lesions the ensemble would find
  (docs/experiments.md),
* it has seen every image any member trained or validated on (``seen_images``), so ``calibrate``
  and ``adapt`` warn when given one of them.

:func:`segment_records_any` scores datalist rows as training scores its validation part, for a
single segmenter or an ensemble (members sharing one preset), for ``calibrate``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from breastai.core.files import atomic_write_text
from breastai.models.checkpoint import Checkpoint, CheckpointError, ModelArgs, is_segmenter, model_from_checkpoint
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.lesions import lesion_rules
from breastai.models.outliner import mean_presence

__all__ = ["MIN_MEMBERS", "segmenter_checkpoints", "segmenter_ensemble", "build_segmenter_ensemble",
           "segment_records_any", "shared_validation", "shared_validation_rows", "threshold_on_shared_validation"]

MIN_MEMBERS = 2

log = logging.getLogger("breastai")


def segmenter_checkpoints(source: str | Path) -> list[Path]:
    """The best checkpoints a source names: a ``.pt`` file, a run folder (``best.pt``) or a cross-validation
    run folder (every ``fold*/best.pt``).

    Raises:
        CheckpointError: the source holds none of these.
    """
    p = Path(source)
    if p.is_file():
        return [p]
    if (p / "best.pt").is_file():
        return [p / "best.pt"]
    folds = sorted(p.glob("fold*/best.pt"), key=lambda f: int(f.parent.name[4:]) if f.parent.name[4:].isdigit() else 0)
    if folds:
        return folds
    raise CheckpointError(f"{source}: no checkpoint file, run folder (best.pt) or cross-validation run (fold*/best.pt)")


def _agree(members: Sequence[Checkpoint], names: Sequence[str], what: str, get: Any) -> None:
    first = get(members[0])
    for m, n in zip(members[1:], names[1:]):
        if get(m) != first:
            raise CheckpointError(f"{n}: its {what} differ from {names[0]}'s ({get(m)} against {first}); the "
                                  f"members of a segmenter ensemble must share them")


def segmenter_ensemble(members: Sequence[Checkpoint], names: Sequence[str]) -> Checkpoint:
    """The ensemble checkpoint of segmenter checkpoints (module docstring for what it holds).

    Raises:
        CheckpointError: fewer than :data:`MIN_MEMBERS`, a member that is no segmenter's best
            checkpoint (a classifier, an ensemble, a resume ``last.pt``, a pipeline), or members that
            read images differently, find lesions by other rules, or preprocess differently.
    """
    if len(members) < MIN_MEMBERS:
        raise CheckpointError(f"a segmenter ensemble needs at least {MIN_MEMBERS} members, got {len(members)}")
    for m, n in zip(members, names):
        why = ("is an ensemble" if m.is_ensemble else "is a resume checkpoint (last.pt); give best.pt" if m.is_resume
               else f"is a classifier ({m.model.name}); ensembles of classifiers are built from their runs"
               if not is_segmenter(m) else None)
        if why:
            raise CheckpointError(f"{n}: {why}")
    _agree(members, names, "reader options", lambda m: m.config["data"].get("reader_options") or {})
    _agree(members, names, "lesion rules", lambda m: lesion_rules(m.config["seg"]))
    _agree(members, names, "preprocessing", lambda m: m.config["preprocess"])
    seen = {part: sorted({d for m in members for d in (m.seen_images or {}).get(part, [])}) for part in ("train", "val")}
    modalities = sorted({x for m in members for x in m.modalities}) if all(m.modalities for m in members) else None
    thresholds = [float(m.threshold) for m in members]
    config = {**members[0].config, "ensemble": {"members": [str(n) for n in names], "combine": "mean",
                                                "task": "segmentation", "threshold": "median of the members'"}}
    return Checkpoint(model=ModelArgs("ensemble"), weights={}, config=config, classes=list(members[0].classes),
                      threshold=float(np.median(thresholds)), temperature=1.0, metrics={"member_thresholds": thresholds},
                      seen_images=seen if any(seen.values()) else None, modalities=modalities,
                      members=list(members), member_weights=[1.0 / len(members)] * len(members), combine="mean")


def shared_validation(members: Sequence[Checkpoint]) -> frozenset[str]:
    """The digests of the images in every member's validation part and in no member's training part:
    the part seeds of one split share (empty for fold runs, whose validation parts are disjoint, or
    for members that keep no digests)."""
    parts = [m.seen_images or {} for m in members]
    val = frozenset.intersection(*(frozenset(p.get("val", [])) for p in parts))
    return val - frozenset().union(*(p.get("train", []) for p in parts))


def shared_validation_rows(members: Sequence[Checkpoint], records: Sequence[dict[str, Any]], source: str
                           ) -> list[dict[str, Any]]:
    """The rows of ``records`` whose image is in every member's validation part and in no member's
    training part (by the image digests each checkpoint keeps).

    Raises:
        CheckpointError: a member keeps no digests of its parts (written before they were kept).
        ValueError: no such row holds a lesion (the members do not share a validation part, or
            ``source`` is not the datalist they were trained on).
    """
    from breastai.data.provenance import record_digests
    from breastai.engine.seg_trainer import MIN_LESION_IMAGES, lesion_free

    if not all((m.seen_images or {}).get("val") for m in members):
        raise CheckpointError("a member keeps no digests of its validation images (written by an older breastai, or "
                              "trained without a validation part): the shared part cannot be found; choose the "
                              "threshold with 'breastai calibrate --lesion-sensitivity' on traced images none of the "
                              "members trained on")
    shared = shared_validation(members)
    rows = [r for r, d in zip(records, record_digests(records)) if d in shared]
    n_lesion = int(len(rows) - lesion_free(rows).sum()) if rows else 0
    if not n_lesion:
        raise ValueError(f"{source}: {len(rows)} of its {len(records)} images are in every member's validation part "
                         "and no member's training part, none of them with a lesion: the members do not share a "
                         "validation part (train them with the same data.split_seed), or this is not the datalist "
                         "they were trained on")
    if n_lesion < MIN_LESION_IMAGES:  # training chose each member's threshold on as few; say so
        log.warning("warning: the shared validation part holds %d lesion image(s): the threshold rests on them alone",
                    n_lesion)
    return rows


def threshold_on_shared_validation(ckpt: Checkpoint, data: str | Path, device: str = "auto") -> Checkpoint:
    """The segmenter ensemble ``ckpt`` with its presence threshold chosen on its members' shared
    validation part, found in ``data`` (their training datalist), by the rule training uses for
    one segmenter (``seg.presence_sensitivity`` of the validation lesion images keep a found lesion).

    Raises:
        CheckpointError, ValueError: as :func:`shared_validation_rows`; members that were validated
            with different ``seg.presence_sensitivity``.
        DatalistError, RecordError: ``data`` or one of its images is unusable (named).
    """
    from breastai.core.distributed import resolve_device
    from breastai.data.frames import read_samples
    from breastai.engine.seg_trainer import check_seg_parts, choose_presence_threshold, score_segmentation

    names = [str(n) for n in ckpt.config["ensemble"]["members"]]
    _agree(ckpt.members, names, "seg.presence_sensitivity", lambda m: float(m.config["seg"]["presence_sensitivity"]))
    rows = shared_validation_rows(ckpt.members, read_samples(data, ckpt.config["data"]), str(data))
    check_seg_parts(rows, {"val": np.arange(len(rows))})
    pred, temperature = segment_records_any(ckpt, rows, resolve_device(device))
    threshold = choose_presence_threshold(pred, ckpt.config, temperature)
    scored = score_segmentation(pred, ckpt.config, temperature, threshold)
    lesion = [r["lesion_found"] for r in scored if r["has_lesion"]]
    free = [r["lesion_found"] for r in scored if not r["has_lesion"]]
    chosen = {"images": len(rows), "lesion_images": len(lesion), "found": float(np.mean(lesion)),
              "false_lesions": float(np.mean(free)) if free else None, "datalist": str(data)}
    config = {**ckpt.config, "ensemble": {**ckpt.config["ensemble"], "threshold": "chosen on the members' shared "
                                          "validation part"}}
    return dataclasses.replace(ckpt, threshold=float(threshold), config=config,
                               metrics={**ckpt.metrics, "threshold_validation": chosen})


def build_segmenter_ensemble(sources: Sequence[str | Path], out: str | Path, threshold_from: str | Path | None = None,
                             device: str = "auto") -> dict[str, Any]:
    """``breastai ensemble`` over segmenters: ``out/best.pt`` (the ensemble) and ``out/summary.json``.

    Args:
        sources: checkpoint files, run folders or cross-validation run folders (every fold's model).
        out: the output folder.
        threshold_from: the datalist the members were trained on, when they share a validation part
            (seeds of one split): the presence threshold is chosen there
            (:func:`threshold_on_shared_validation`) instead of the members' median.
        device: auto, cpu or cuda (used with ``threshold_from``).

    Returns:
        The summary: members, their thresholds and the ensemble's (and where it was chosen); with
        ``shared_validation_datalist`` the datalist the members trained on when they validated on
        the same images (seeds of one split), where ``threshold_from`` can choose it.

    Raises:
        CheckpointError: as :func:`segmenter_checkpoints` and :func:`segmenter_ensemble`.
        ValueError: as :func:`shared_validation_rows`.
    """
    paths = [p for s in sources for p in segmenter_checkpoints(s)]
    ckpt = segmenter_ensemble([load_checkpoint(p) for p in paths], [str(p) for p in paths])
    if threshold_from is not None:
        ckpt = threshold_on_shared_validation(ckpt, threshold_from, device)
    shared = bool(shared_validation(ckpt.members))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "best.pt", ckpt)
    summary = {"task": "segmentation", "combine": "mean", "members": [str(p) for p in paths],
               "member_thresholds": ckpt.metrics["member_thresholds"], "threshold": ckpt.threshold,
               "threshold_chosen_on": ckpt.metrics.get("threshold_validation"),
               # where the threshold could be chosen instead of the median: the members' own datalist
               "shared_validation_datalist": str(ckpt.members[0].config["data"]["datalist"]) if shared else None}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def segment_records_any(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device
                        ) -> tuple[dict[str, Any], float]:
    """A segmenter's (or a segmenter ensemble's) predictions on ``records`` as validation scores them
    (:func:`~breastai.engine.seg_trainer.segment_records`), and the temperature that turns their
    ``presence_logit`` into the presence probability: an ensemble's are the logits of its members'
    mean calibrated probabilities, with temperature 1."""
    from breastai.engine.seg_trainer import segment_records

    if not ckpt.is_ensemble:
        return segment_records(model_from_checkpoint(ckpt).to(device), ckpt.config, records, device), float(ckpt.temperature)
    preds = [segment_records(model_from_checkpoint(m).to(device), m.config, records, device) for m in ckpt.members]
    presence = np.clip(mean_presence([p["presence_logit"] for p in preds], [m.calibration for m in ckpt.members]),
                       1e-7, 1 - 1e-7)
    pred = dict(preds[0])
    pred["prob"] = np.mean([np.asarray(p["prob"], np.float32) for p in preds], axis=0)
    pred["presence_logit"] = np.log(presence / (1 - presence))
    return pred, 1.0
