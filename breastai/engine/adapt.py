"""Batch-norm statistics from a new site's unlabeled images (AdaBN, Li et al. 2016): ``breastai adapt``.

A network trained at one hospital normalises each layer with the means and variances of that
hospital's images. Another scanner shifts them (gain, speckle, resolution), and every layer after
the first reads features off-centre. :func:`batchnorm_statistics` re-estimates those running
statistics on the new site's images, preprocessed exactly as the checkpoint scores them, without
labels and without touching a learnt weight; :func:`adapted_checkpoint` puts them into a copy of
the checkpoint. :func:`adapt_checkpoint` is the command: it checks the checkpoint and the
datalist, estimates the statistics (for an ensemble each member's; for a pipeline its segmenter's
first, then its members' on what they will read there, the lesions the adapted segmenter outlines
(:func:`~breastai.engine.auto_outline.lesion_records`), so that a site with no tracing can adapt it), refits the
out-of-distribution detector on the local images (:func:`local_detector`: a detector is tied to the
statistics it was fitted under), and writes the new checkpoint with its
:class:`~breastai.models.adaptation.Adaptation` record.
``benchmarks/adabn_cross_site.py`` measured the adaptation across sites, ``benchmarks/adabn_ood.py``
what it does to the detector.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from breastai.core.distributed import resolve_device
from breastai.core.files import file_sha256
from breastai.core.keys import Keys
from breastai.data.frames import read_samples
from breastai.data.provenance import part_digests
from breastai.engine.auto_outline import lesion_records, outline_row
from breastai.engine.loaders import build_dataset
from breastai.engine.loops import _forward, collate
from breastai.engine.recalibrate import check_new_checkpoint, warn_seen_before
from breastai.engine.scoring import RecordError, _Named, default_names, predict_records, row_names
from breastai.models.adaptation import BN_BUFFERS, Adaptation, batchnorm_layers, learnt_weights_digest
from breastai.models.checkpoint import (Checkpoint, CheckpointError, checkpoint_task, model_from_checkpoint, package_versions,
                                        reads_mask)
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.ood import FeatureDensity, fit_feature_density
from breastai.models.outliner import Outliner

__all__ = ["MIN_IMAGES", "MIN_DETECTOR_IMAGES", "LESION_SHARE_BAND", "TooFewImagesError", "batchnorm_statistics",
           "adapted_checkpoint", "check_adaptable", "lesion_share", "share_in_band", "adapt_checkpoint"]

log = logging.getLogger("breastai")

# A running mean and variance per channel from fewer images than this are mostly the noise of the
# few; the cross-site benchmark estimated them from about 100 (BrEaST halves) to 390 (BUSI halves).
MIN_IMAGES = 20
# The detector refitted on the local images needs more: refitted on 30 BrEaST images it flagged 37 %
# of the mini-MIAS films and none of the mammography DICOMs, on 126 all the films and 7 of 8
# (docs/experiments.md). Below this the adapted checkpoint carries no detector rather than a loose one.
MIN_DETECTOR_IMAGES = 100
# The share of images in which the source segmenter finds a lesion, outside which adapt warns. At
# BrEaST adapting helped on mixes where it found a lesion in 39-51 % of the images and did not with
# 68-94 %; but on a site's own normal images the segmenter finds false lesions (33-77 % of BUSI's
# held-out ones), so a half-and-half mix there reads up to 88 %, while images nearly all holding a
# lesion read at least 93 % (docs/experiments.md). The upper edge is between those; below the lower,
# the least tried, nothing was measured.
LESION_SHARE_BAND = (0.38, 0.90)
_SHOWN = 5  # rows named in a refusal; the count says how many more


class TooFewImagesError(ValueError):
    """The local datalist has too few images to estimate batch-norm statistics from."""


def _even_batch_size(n: int, at_most: int) -> int:
    """The batch size that splits ``n`` into the fewest batches of near-equal size: the running
    average weights every batch alike, so a last batch of two images would count as much as 32."""
    return math.ceil(n / math.ceil(n / at_most))


@torch.no_grad()
def batchnorm_statistics(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                         batch_size: int = 32, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Every batch-norm layer's running mean and variance over ``records``.

    The records go through the checkpoint's evaluation preset (crop, outline channel, intensity
    normalisation) as in scoring; only the normalisation layers see them in training mode, with a
    cumulative average over the batches, and dropout stays off. Labels are not read.

    Args:
        ckpt: a single-model checkpoint.
        records: the new site's samples (image, and mask or box where the model crops the lesion).
        device: where the model runs.
        batch_size: at most this many images per batch.
        names: how an error names each record (default ``case_id C``; see
            :func:`breastai.engine.scoring.row_names`).

    Returns:
        The new buffers, keyed as in the model's state dict.

    Raises:
        ValueError: an ensemble, a model without batch norm, or fewer than two records.
        RecordError: a record's image or mask cannot be read or prepared (named by ``names``).
    """
    if ckpt.is_ensemble:
        raise ValueError("batch-norm statistics are per model: adapt each member of the ensemble")
    if len(records) < 2:
        raise ValueError(f"batch-norm statistics need at least 2 images, got {len(records)}")
    model = model_from_checkpoint(ckpt).to(device).eval()
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not norms:
        raise ValueError(f"model {ckpt.model.name} has no batch-norm layer to adapt")
    for m in norms.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches, not an exponential one
        m.train()
    cfg = {**ckpt.config, "data": {**ckpt.config["data"], "cache": "none"}}
    names = default_names(records) if names is None else names
    loader = DataLoader(_Named(build_dataset(cfg, records, False), names),
                        batch_size=_even_batch_size(len(records), batch_size), shuffle=False,
                        num_workers=cfg["data"]["num_workers"], collate_fn=collate)
    for batch in loader:
        _forward(model, batch[Keys.IMAGE].to(device), batch, device)
    state = model.state_dict()
    return {f"{name}.{b}": state[f"{name}.{b}"].detach().cpu().clone() for name in norms for b in BN_BUFFERS}


def adapted_checkpoint(ckpt: Checkpoint, statistics: dict[str, torch.Tensor]) -> Checkpoint:
    """A copy of ``ckpt`` whose batch-norm buffers are ``statistics``; every learnt weight unchanged."""
    unknown = sorted(set(statistics) - set(ckpt.weights))
    if unknown:
        raise KeyError(f"statistics for buffers the checkpoint does not have: {unknown[:3]}")
    return dataclasses.replace(ckpt, weights={**ckpt.weights, **statistics})


def unreadable_rows(models: Sequence[Checkpoint], records: Sequence[dict[str, Any]],
                    names: Sequence[str]) -> list[tuple[int, str]]:
    """The rows some model's evaluation preset cannot prepare (a truncated file, an unreadable mask),
    each with the error naming it: a site's archive of hundreds of images should not fail on one.
    Preprocessing only (no network), one pass per distinct preset."""
    bad: dict[int, str] = {}
    seen: list[dict[str, Any]] = []
    for m in models:
        cfg = {**m.config, "data": {**m.config["data"], "cache": "none"}}
        key = {k: cfg[k] for k in ("preprocess", "data")}
        if key in seen:
            continue
        seen.append(key)
        ds = _Named(build_dataset(cfg, records, False), names)
        for i in range(len(records)):
            if i not in bad:
                try:
                    ds[i]
                except RecordError as exc:
                    bad[i] = str(exc)
    return sorted(bad.items())


def check_adaptable(ckpt: Checkpoint, source: str | Path) -> None:
    """Refuse a checkpoint whose batch-norm statistics ``breastai adapt`` cannot re-estimate.

    Raises:
        CheckpointError: a model without batch-norm layers, or an ensemble none of whose members
            has one (nothing to adapt).
    """
    if ckpt.is_ensemble:
        if not any(batchnorm_layers(m.weights) for m in ckpt.members):
            raise CheckpointError(f"{source}: no member of this ensemble has a batch-norm layer with running "
                                  "statistics; there is nothing to adapt")
        return
    if not batchnorm_layers(ckpt.weights):
        raise CheckpointError(f"{source}: model {ckpt.model.name} has no batch-norm layer with running statistics; "
                              "there is nothing to adapt")


def _check_masks(ckpt: Checkpoint, records: Sequence[dict[str, Any]], names: Sequence[str]) -> None:
    """Refuse rows without a mask where the model needs one: it crops the lesion or measures its radiomics."""
    if ckpt.config["preprocess"]["mode"] != "crop" and not ckpt.model.spec.requires_radiomics:
        return
    missing = [n for r, n in zip(records, names) if not r.get(Keys.MASK)]
    if missing:
        why = "crops the lesion" if ckpt.config["preprocess"]["mode"] == "crop" else "reads the lesion's radiomics"
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise ValueError(f"model {ckpt.model.name} {why}, so every row needs a lesion mask (column 'mask'); "
                         f"{len(missing)} of {len(records)} have none: {'; '.join(missing[:_SHOWN])}{more}")


def _ood_flagged(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                 names: Sequence[str]) -> float | None:
    """The share of ``records`` the checkpoint's out-of-distribution detector flags (None: it has none)."""
    if ckpt.ood is None:
        return None
    pred = predict_records(ckpt, records, device, progress=True, names=names)
    return float(np.mean(ckpt.ood.score(pred["features"]) > 1.0))


def local_detector(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device,
                   names: Sequence[str], seed: int = 0) -> tuple[FeatureDensity, float]:
    """The adapted checkpoint's out-of-distribution detector, refitted on the local images.

    The stored detector was fitted on the training site's features under the old statistics and
    flags every image once they are re-estimated (docs/experiments.md). Refitted here like
    training fits it (:func:`~breastai.models.ood.fit_feature_density`: the source's layers,
    quantile and margin), with one class since no label is read: Gaussians on one random half of
    the local images' features, scales and threshold on the other half. It then flags what is
    unlike this site's images (a mammogram, a Doppler frame, a photograph).

    Returns:
        The detector, and the share of the local images it flags.
    """
    pred = predict_records(ckpt, records, device, progress=True, names=names)
    feats = pred["features"]
    half = np.random.default_rng(seed).permutation(len(records)) % 2
    old = ckpt.ood
    det = fit_feature_density([f[half == 0] for f in feats], np.zeros(int((half == 0).sum()), dtype=np.int64),
                              [f[half == 1] for f in feats], old.quantile, old.layers, old.margin)
    return det, float(np.mean(det.score(feats) > 1.0))


def _adapt_model(ckpt: Checkpoint, records: Sequence[dict[str, Any]], device: torch.device, batch_size: int,
                 names: Sequence[str]) -> tuple[Checkpoint, int, float | None, float | None]:
    """One model adapted, its detector refitted: the new checkpoint, the layers adapted, and the share
    of the images flagged before and after (None: no detector)."""
    before = _ood_flagged(ckpt, records, device, names)
    log.info("estimating batch-norm statistics of %s on %d local images", ckpt.model.name, len(records))
    stats = batchnorm_statistics(ckpt, records, device, batch_size, names)
    adapted = adapted_checkpoint(ckpt, stats)
    after = None
    if ckpt.ood is not None and len(records) >= MIN_DETECTOR_IMAGES:
        log.info("refitting the out-of-distribution detector on the local images")
        detector, after = local_detector(adapted, records, device, names)
        adapted = dataclasses.replace(adapted, ood=detector)
    elif ckpt.ood is not None:  # tied to the old statistics it would flag everything; refitted on few, too little
        log.warning("warning: %d local images are too few to refit the out-of-distribution detector (at least %d): "
                    "the adapted checkpoint has none, so predict gives no ood flag with it; adapt on more images "
                    "of the site to keep one", len(records), MIN_DETECTOR_IMAGES)
        adapted = dataclasses.replace(adapted, ood=None)
    return adapted, len(batchnorm_layers(stats)), before, after


def lesion_share(segmenter: Checkpoint, records: Sequence[dict[str, Any]], names: Sequence[str],
                 device: torch.device) -> float:
    """The share of ``records`` in which ``segmenter``, as it is, finds a lesion (a row's own mask is not read).

    A segmenter trained with lesion-free images learnt its batch statistics on batches holding them,
    and statistics re-estimated on a set of another mix describe different batches: this is how
    ``adapt`` checks the mix without reading a label.

    Raises:
        RecordError: a row's image cannot be read or outlined (named by ``names``).
    """
    outliner = Outliner(segmenter, device)
    return float(np.mean([outline_row(r, outliner, n)[1]["n_lesions"] > 0 for r, n in zip(records, names)]))


def share_in_band(share: float) -> bool:
    """Whether a :func:`lesion_share` lies within :data:`LESION_SHARE_BAND` (``adapt`` warns outside it)."""
    lo, hi = LESION_SHARE_BAND
    return lo <= share <= hi


def _warn_mix(share: float, n: int) -> None:
    """Warn where the images' lesion share lies outside :data:`LESION_SHARE_BAND`, saying which images to add."""
    if share_in_band(share):
        return
    lo, hi = LESION_SHARE_BAND
    if share > hi:
        why = ("nearly all hold a lesion, and at a second site adapting on such images made it miss more lesions, "
               "while with about as many lesion-free images added it missed fewer: add lesion-free images of your "
               "site (normal exams) to the datalist and adapt again")
    else:
        why = (f"fewer than {lo:.0%} was not tried at a second site: add images with a lesion of your site to the "
               "datalist and adapt again")
    log.warning("warning: the segmenter as trained finds a lesion in %.0f%% of the %d images; %s (docs/experiments.md), "
                "and check the adapted checkpoint on a few traced or labelled cases before relying on it",
                100 * share, n, why)


Rows = tuple[Sequence[dict[str, Any]], Sequence[str]]


def _adapt_any(ckpt: Checkpoint, rows_for: Callable[[Checkpoint], Rows], device: torch.device, batch_size: int
               ) -> tuple[Checkpoint, int, float | None, float | None]:
    """A single model or an ensemble adapted, each model on the rows ``rows_for`` gives it (members
    without batch norm, such as radiomics models, kept; an ensemble's weights kept, and no flagged
    shares reported for it)."""
    if not ckpt.is_ensemble:
        records, names = rows_for(ckpt)
        return _adapt_model(ckpt, records, device, batch_size, names)
    members, layers = [], 0
    for m in ckpt.members:
        if batchnorm_layers(m.weights):
            records, names = rows_for(m)
            m, n, _, _ = _adapt_model(m, records, device, batch_size, names)
            layers += n
        members.append(m)
    return dataclasses.replace(ckpt, members=members), layers, None, None


def _learnt_digest(ckpt: Checkpoint) -> str:
    """:func:`~breastai.models.adaptation.learnt_weights_digest` of a model, or of an ensemble's members in order."""
    if not ckpt.is_ensemble:
        return learnt_weights_digest(ckpt.weights)
    return learnt_weights_digest({f"member{i}.{k}": v for i, m in enumerate(ckpt.members) for k, v in m.weights.items()})


def adapt_checkpoint(checkpoint: str | Path, data: str | Path, out: str | Path, device: str = "auto",
                     batch_size: int = 32, segmenter_only: bool = False) -> Adaptation:
    """``breastai adapt``: re-estimate ``checkpoint``'s batch-norm statistics on the unlabeled datalist
    ``data`` and write the adapted checkpoint to ``out`` atomically (the source is left as it is).

    Args:
        checkpoint: the source checkpoint: a single classifier's, a segmenter's (whole images, no
            mask needed), an ensemble's (each member with batch norm adapted with its own preset; the
            combination kept), or a pipeline's (its segmenter on the raw images, then its classifier
            or each member: one that reads the lesion on the lesions the adapted segmenter outlines,
            or on a row's own mask where it has one, as predict scores; no mask needed).
        data: datalist of local images, at least :data:`MIN_IMAGES`; labels are not needed (nor
            read); a lesion mask per row where a model that is not a pipeline crops the lesion or
            reads radiomics.
        out: the new checkpoint file.
        device: auto, cpu or cuda.
        batch_size: at most this many images per batch of the statistics.
        segmenter_only: for a pipeline, adapt its segmenter alone and keep its classifier as it is
            (at BrEaST the pipeline's members adapted ranked worse, its segmenter adapted on a mix
            with lesion-free images better: docs/experiments.md).

    Returns:
        The recorded :class:`~breastai.models.adaptation.Adaptation`.

    Raises:
        CheckpointError: the checkpoint is missing, corrupted, or has no batch norm.
        DatalistError, RecordError: the datalist or one of its images is unusable (named).
        TooFewImagesError: fewer than :data:`MIN_IMAGES` images (or, for a pipeline, lesions found).
        ValueError: ``out`` is the source checkpoint or a folder; rows without the mask the model needs.
    """
    out = check_new_checkpoint(out, checkpoint)
    ckpt = load_checkpoint(checkpoint)
    check_adaptable(ckpt, checkpoint)
    if segmenter_only and ckpt.segmenter is None:
        raise ValueError(f"{checkpoint} is not a pipeline: segmenter_only (--segmenter-only) adapts a pipeline's "
                         "segmenter alone; adapt a segmenter's own checkpoint without it")
    cfg = ckpt.config
    # A segmenter's classes are its target's ("no lesion", "lesion"); a row's label, where given, is a
    # stratum of its datalist (benign, malignant, normal), checked against those.
    segmenter = checkpoint_task(ckpt) == "segmentation"
    records = read_samples(data, cfg["data"], cfg["data"]["classes"] if segmenter else ckpt.classes,
                           require_label=False)
    names = row_names(data, records, cfg["data"].get("reader_options"))
    models = [m for m in ckpt.members if batchnorm_layers(m.weights)] if ckpt.is_ensemble else [ckpt]
    if segmenter_only:
        models = []  # no classifier row is read
    pipeline = ckpt.segmenter is not None
    if not pipeline:  # a pipeline outlines the rows without a mask itself, as it does when it scores them
        for m in models:
            _check_masks(m, records, names)  # before any image is read
    # A pipeline's lesion readers get their rows from its segmenter, whose preset reads every image and
    # every row's own mask (its target), so that is where an unreadable row of theirs shows too.
    readers = [ckpt.segmenter, *[m for m in models if not reads_mask(m)]] if pipeline else models
    skipped = unreadable_rows(readers, records, names)
    for _, why in skipped:
        log.warning("skipped: %s", why)
    if skipped:
        drop = {i for i, _ in skipped}
        names = [n for i, n in enumerate(names) if i not in drop]
        records = [r for i, r in enumerate(records) if i not in drop]
    if len(records) < MIN_IMAGES:
        raise TooFewImagesError(f"datalist {data}: {len(records)} image(s)"
                                + (f" readable ({len(skipped)} unreadable, skipped)" if skipped else "")
                                + f"; breastai adapt needs at least {MIN_IMAGES} images of the site (the statistics "
                                "of fewer are mostly noise)")
    dev = resolve_device(device)
    share = None
    if segmenter or pipeline:
        share = lesion_share(ckpt if segmenter else ckpt.segmenter, records, names, dev)
        _warn_mix(share, len(records))
    elif not ckpt.is_ensemble and cfg["preprocess"]["mode"] != "crop":
        log.warning("warning: measured across two ultrasound sites, adapting helped the lesion-crop models but made "
                    "a whole-image model's calibration worse (docs/results.md); check the adapted checkpoint on a few "
                    "labelled cases of your site before relying on it")
    warn_seen_before(ckpt, records)
    if ckpt.recalibration and not segmenter_only:  # a kept classifier keeps the statistics it was fitted under
        log.warning("warning: %s carries a local recalibration (breastai calibrate) fitted under the batch-norm "
                    "statistics this replaces: run breastai calibrate again on the adapted checkpoint", checkpoint)
    seg, lesions = None, None
    if pipeline:
        # The segmenter first, on the raw images; then the members that read the lesion see the lesions
        # the adapted segmenter outlines, as they will when the pipeline scores this site's images.
        log.info("adapting the bundled segmenter on the %d images", len(records))
        seg, seg_layers, _, _ = _adapt_any(ckpt.segmenter, lambda m: (records, names), dev, batch_size)
        if _learnt_digest(seg) != _learnt_digest(ckpt.segmenter):
            raise RuntimeError("adapting changed a learnt weight of the segmenter; nothing was written")
        if any(reads_mask(m) for m in models):
            rows, row_of, infos = lesion_records(records, [Outliner(seg, dev)] * len(records), names, False)
            row_labels = [names[i] for i in row_of]
            outlined = sum(i["n_lesions"] for i in infos if i["mask_source"] == "segmenter")
            empty = sum(i["n_lesions"] == 0 for i in infos)
            log.info("the adapted segmenter outlined %d lesion(s); %d image(s) without a mask had none found and are "
                     "left out of the statistics of the members that read the lesion", outlined, empty)
            if len(rows) < MIN_IMAGES:
                raise TooFewImagesError(f"datalist {data}: {len(rows)} lesion(s) to read ({outlined} outlined by the "
                                        f"segmenter in {len(records)} images, {empty} with none found); the members "
                                        f"that read the lesion need at least {MIN_IMAGES}")
            lesions = (rows, row_labels)

    def rows_for(m: Checkpoint) -> Rows:
        return lesions if lesions is not None and reads_mask(m) else (records, names)

    if segmenter_only:  # the classifier as it was, with its own statistics and detector
        adapted, layers, before, after = ckpt, 0, None, None
    else:
        adapted, layers, before, after = _adapt_any(ckpt, rows_for, dev, batch_size)
    if seg is not None:
        adapted, layers = dataclasses.replace(adapted, segmenter=seg), layers + seg_layers
    learnt = _learnt_digest(ckpt)
    if _learnt_digest(adapted) != learnt:  # only the buffers may move
        raise RuntimeError("adapting changed a learnt weight; nothing was written")
    rec = Adaptation(method="adabn", n=len(records), layers=layers,
                     image_digests=part_digests(records), source_checkpoint=file_sha256(checkpoint),
                     learnt_weights_digest=learnt, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     breastai_version=package_versions()["breastai"], ood_flagged_before=before,
                     ood_flagged_after=after, task="segmentation" if segmenter or segmenter_only else "classification",
                     skipped=[why for _, why in skipped], lesion_share=share)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, dataclasses.replace(adapted, adaptation=[*(ckpt.adaptation or []), rec]))
    return rec
