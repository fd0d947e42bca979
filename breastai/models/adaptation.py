"""The record of a batch-norm adaptation (``breastai adapt``) and the digests that prove what it changed.

Batch-norm layers normalise each channel with running means and variances estimated on the
training site's images. ``breastai adapt`` (:mod:`breastai.engine.adapt`) re-estimates those
buffers on a new site's unlabeled images and changes nothing else: every learnt weight (convolution
kernels, the batch-norm scale and shift, the head) stays as trained. :func:`learnt_weights_digest`
is a digest of exactly those learnt weights, so the same value before and after shows that no
learnt weight moved, while :func:`breastai.models.checkpoint.weights_digest` (every tensor) tells
the adapted weights from the source's. :class:`Adaptation` is what the new checkpoint records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import torch

from breastai.models.digest import content_digest

__all__ = ["BN_BUFFERS", "Adaptation", "is_batchnorm_buffer", "batchnorm_layers", "learnt_weights_digest"]

# The buffers of torch's batch-norm layers (``nn.modules.batchnorm._BatchNorm``); their learnt
# ``weight`` and ``bias`` are parameters and not among them.
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def is_batchnorm_buffer(key: str) -> bool:
    """Whether a state-dict key is a batch-norm running statistic (or its batch counter)."""
    return key.rsplit(".", 1)[-1] in BN_BUFFERS


def batchnorm_layers(weights: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the batch-norm layers of a state dict that keep running statistics, sorted."""
    suffix = f".{BN_BUFFERS[0]}"
    return sorted(k[: -len(suffix)] for k in weights if k.endswith(suffix))


def learnt_weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` of a state dict without its batch-norm buffers: the weights training learnt.

    An adapted checkpoint has the learnt-weights digest of its source (and another
    :func:`~breastai.models.checkpoint.weights_digest`).
    """
    return content_digest({k: v for k, v in weights.items() if not is_batchnorm_buffer(k)})


@dataclass
class Adaptation:
    """One batch-norm adaptation of a checkpoint (``breastai adapt``): which statistics, from what.

    Only the batch-norm running means and variances were replaced, by those of the local images
    preprocessed as the checkpoint scores them; no label was read and no learnt weight changed
    (``learnt_weights_digest`` is the source's). The calibration (temperature, offset) and the
    threshold are the source's. The out-of-distribution detector is refitted on the local images
    (:func:`breastai.engine.adapt.local_detector`): the stored one was fitted on the training
    site's features under the old statistics and flags every image under re-estimated ones, even
    the training site's own (``benchmarks/adabn_ood.py``); refitted, it flags what is unlike this
    site's images. ``ood_flagged_before`` is the share of the local images the source checkpoint
    flags (its own detector and statistics: are these images like the training site's?),
    ``ood_flagged_after`` the share the refitted detector flags. A calibration
    refitted on local labelled cases (``breastai calibrate``) belongs after this, on the adapted
    checkpoint.

    Attributes:
        method: ``adabn`` (running statistics re-estimated, Li et al. 2016).
        n: local images (samples, one per DICOM frame with the frame policy ``all``) the statistics
            were estimated on.
        layers: batch-norm layers adapted.
        image_digests: sorted digests of the local image files (:func:`breastai.data.provenance.part_digests`).
        source_checkpoint: SHA-256 of the source checkpoint file's bytes.
        learnt_weights_digest: :func:`learnt_weights_digest` of the weights, the same before and after.
        created: when (ISO 8601, UTC).
        breastai_version: the breastai that adapted it.
        ood_flagged_before: share of the local images the source checkpoint's out-of-distribution
            detector flags; None: the checkpoint has no detector.
        ood_flagged_after: the same under the adapted statistics and the refitted detector; None:
            no detector (none in the source, or too few local images to refit one on).
        task: ``classification`` (a classifier, a pipeline, an ensemble: each member's statistics)
            or ``segmentation`` (a segmenter).
        skipped: the datalist rows that could not be prepared (each named, with why), left out.
        lesion_share: for a segmenter or a pipeline, the share of the images in which the segmenter
            as trained found a lesion (:func:`breastai.engine.adapt.lesion_share`); None otherwise.
    """

    method: str
    n: int
    layers: int
    image_digests: list[str] = field(repr=False)
    source_checkpoint: str
    learnt_weights_digest: str
    created: str
    breastai_version: str
    ood_flagged_before: float | None = None
    ood_flagged_after: float | None = None
    task: str = "classification"
    skipped: list[str] = field(default_factory=list)
    lesion_share: float | None = None

    def to_state(self) -> dict[str, Any]:
        """The on-disk entry (plain containers)."""
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The short record for run summaries: no image digests."""
        return {k: v for k, v in self.to_state().items() if k != "image_digests"}

    @classmethod
    def from_state(cls, entry: Mapping[str, Any]) -> Adaptation:
        """Read an on-disk entry; keys this version does not know are ignored."""
        return cls(**{f.name: entry[f.name] for f in fields(cls) if f.name in entry})
