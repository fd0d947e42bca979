"""A segmentation checkpoint at work: one decoded image in, its lesions in the stored geometry out.

An :class:`Outliner` holds what a segmenter's checkpoint says: the model, its own preprocessing
preset and reader options, the presence calibration and threshold (``temperature``,
``threshold``), and the lesion rules (``config["seg"]``). :meth:`Outliner.outline` preprocesses an
image exactly as the segmenter was validated (``build_transforms(cfg, train=False)``), runs it
without gradients, sends the mask probabilities back to the image as stored (network square ->
reader grid -> DICOM crop and flip undone, :func:`breastai.data.geometry.map_to_original`) and
finds the lesions there (:func:`breastai.models.lesions.find_lesions`), so that each lesion's mask
can be handed to a classifier as a traced mask would be. A segmenter ensemble's checkpoint
(:mod:`breastai.engine.seg_ensemble`) gives one such model per member, each with its own
calibration, behind one shared preset; their maps are averaged before any lesion is found. Predict (``breastai.inference``) and
``evaluate`` (``breastai.engine``) both use it, which is why it lives here, below both.

``seg.min_area_fraction`` is a fraction of the network's square input in training and validation;
on the stored image the same floor in pixels is kept (the fraction is rescaled by the square's
area over the image's), so a lesion kept at validation is kept here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from breastai.data.geometry import map_to_original, reader_to_original
from breastai.data.readers.registry import frame_options, load_image
from breastai.data.transforms import FULL_IMAGE, KeepFullImaged, build_transforms
from breastai.models.calibration import apply_temperature, calibrated_logit
from breastai.models.checkpoint import (Checkpoint, CheckpointError, checkpoint_task, inference_model, model_names,
                                        weights_digest)
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.lesions import Lesion, find_lesions_and_score, lesion_rules
from breastai.models.segmenter import as_mirror_mode, mirror_mode, segment

__all__ = ["Outline", "Outliner", "SegmenterSource", "is_segmenter", "mean_presence", "require_task", "resolve_segmenter"]

_FLAGS = {"classification": "--checkpoint", "segmentation": "--segmenter"}


def is_segmenter(ckpt: Checkpoint) -> bool:
    """Whether ``ckpt`` is a segmentation checkpoint (False for a model not registered here)."""
    try:
        return checkpoint_task(ckpt) == "segmentation"
    except CheckpointError:
        return False


def require_task(ckpt: Checkpoint, task: str, source: str) -> None:
    """Refuse a checkpoint of the other kind, naming the flag it belongs to.

    Raises:
        CheckpointError: ``ckpt`` is a segmenter where a classifier is wanted, or the reverse.
    """
    try:
        got = checkpoint_task(ckpt)
    except CheckpointError:  # a model not registered here: rebuilding it names it
        return
    if got == task:
        return
    if got == "segmentation":
        raise CheckpointError(f"{source}: a segmentation checkpoint (model {ckpt.model.name}) outlines lesions and "
                              f"scores no malignancy: give it as --segmenter and a classifier checkpoint as --checkpoint")
    raise CheckpointError(f"{source}: a classifier checkpoint (model {ckpt.model.name}) outlines nothing: give it as "
                          f"--checkpoint and a segmentation checkpoint (breastai train --config configs/busi_seg.yaml) "
                          f"as {_FLAGS[task]}")


@dataclass
class Outline:
    """What a segmenter makes of one image, all on the image as stored.

    Attributes:
        presence: the calibrated probability that the image holds a lesion.
        lesions: the found lesions, largest first (empty: no lesion found); their masks, areas and
            diameters are on the stored image's pixels.
        score: the image's lesion score, the highest probability a lesion of it would carry at any
            presence threshold (:func:`~breastai.models.lesions.lesion_score`; 0: no candidate at
            all); ``lesions`` is empty exactly when it is under the threshold.
        probability: the mask probabilities (H, W) in [0, 1].
        image: the segmenter's normalised grey image (H, W) in [0, 1], for overlays.
    """

    presence: float
    lesions: list[Lesion]
    probability: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)
    score: float = 0.0


class _Member:
    """One segmentation model of a segmenter (an ensemble has several): its weights, presence calibration
    and whether it also reads the mirror image. The preprocessing is the segmenter's, shared."""

    def __init__(self, ckpt: Checkpoint, device: torch.device):
        self.calibration = ckpt.calibration
        self.flip = mirror_mode(ckpt.config)
        self.model = inference_model(ckpt, device)


def mean_presence(presence_logits: Sequence[np.ndarray], calibrations: Sequence[dict]) -> np.ndarray:
    """The segmenters' mean calibrated presence probability: each model's raw presence logits through
    its own calibration, then averaged (one model: its calibrated probability)."""
    return np.mean([apply_temperature(calibrated_logit(z, c), 1.0) for z, c in zip(presence_logits, calibrations)], axis=0)


class Outliner:
    """A segmentation checkpoint's model (or an ensemble's models), preset, presence calibration and lesion rules.

    An ensemble of segmenters (``breastai ensemble`` over segmenter runs, one preprocessing preset)
    preprocesses each image once and outlines with the mean of its members' mask probabilities and of
    their calibrated presence probabilities; the lesion rules and the presence threshold are the
    ensemble's.

    Args:
        ckpt: a segmentation checkpoint (its ``model.name`` is a segmentation model), or an ensemble of them.
        device: where the models run.
        source: where the checkpoint came from (for messages).

    Raises:
        CheckpointError: a classifier checkpoint, or one that lacks what outlining needs.
    """

    def __init__(self, ckpt: Checkpoint, device: torch.device | str = "cpu", source: str = "<state>"):
        require_task(ckpt, "segmentation", source)
        parts = ckpt.members if ckpt.is_ensemble else [ckpt]
        try:
            cfg = ckpt.config
            self.reader_options = cfg["data"].get("reader_options") or {}
            self.rules = lesion_rules(cfg["seg"])
            for m in parts:
                m.config["preprocess"]["size"]
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: segmentation checkpoint lacks its preprocessing or lesion rules "
                                  f"({exc}); it was not written by breastai train") from exc
        self.source, self.cfg, self.device = source, cfg, torch.device(device)
        self.name = model_names(ckpt)  # the registry name, or "ensemble of N name"
        self.threshold = float(ckpt.threshold)
        self.recalibration = list(ckpt.recalibration or [])  # a site's own threshold (breastai calibrate)
        self.modalities = list(ckpt.modalities) if ckpt.modalities else None
        self.seen_images = ckpt.seen_images  # its training and validation images' digests (an ensemble's union)
        self.members = [_Member(m, self.device) for m in parts]
        self.weights_digest = weights_digest(ckpt)  # the checkpoint's weights, not the folded copies'
        self.steps = list(build_transforms(cfg, train=False, full_image=[KeepFullImaged()]).transforms)

    @property
    def flip(self) -> str:
        """How the (first) model reads the mirror image (a :data:`~breastai.models.segmenter.MIRROR`
        mode); setting it (a mode, or True for ``both``, False for ``none``) switches every member."""
        return self.members[0].flip

    @flip.setter
    def flip(self, value: bool | str) -> None:
        mode = as_mirror_mode(value)
        for m in self.members:
            m.flip = mode

    def fingerprint(self) -> dict[str, Any]:
        """What decides this segmenter's outlines: weights, configuration, calibrations and threshold."""
        from breastai.models.digest import content_digest

        return {"weights": self.weights_digest, "config": content_digest(self.cfg), "calibration": [dict(m.calibration) for m in self.members]
                if len(self.members) > 1 else dict(self.members[0].calibration), "threshold": self.threshold}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> "Outliner":
        """Load a segmentation checkpoint (safely, ``weights_only=True``)."""
        return cls(load_checkpoint(path, map_location="cpu"), device, str(path))

    @torch.no_grad()
    def maps(self, image: np.ndarray, meta: dict[str, Any], source: str = "<array>") -> tuple[np.ndarray, float, np.ndarray, float]:
        """The segmenter's output on one decoded image, before any lesion is found: the mask
        probabilities on the image as stored, the calibrated presence probability (an ensemble: the
        members' means), the normalised grey image, and the smallest lesion as a fraction of the
        stored image's pixels (the network square's floor rescaled, so a lesion kept at validation is
        kept here).

        Raises:
            ImageReadError: the image cannot be preprocessed (too small, non-finite pixels).
        """
        d: dict[str, Any] = {"image": image, "reader_meta": meta, "mask": None, "case_id": "", "source": source}
        for step in self.steps:  # step by step: MONAI's Compose would wrap the specific errors
            d = step(d)
        x = d["image"][None].to(self.device).contiguous(memory_format=torch.channels_last)  # the members' layout
        outs = [segment(m.model, x, m.flip) for m in self.members]
        prob = np.mean([torch.sigmoid(o.mask_logits.float())[0, 0].cpu().numpy() for o in outs], axis=0)
        presence = float(mean_presence([o.presence_logit.float().cpu().numpy() for o in outs],
                                       [m.calibration for m in self.members])[0])
        shape = tuple(int(s) for s in d["orig_shape"])
        stored = np.clip(map_to_original(prob, d["box"], shape, meta), 0.0, 1.0)
        side = float(d["box"][2])
        floor = self.rules["min_area_fraction"] * side * side / stored.size
        return stored, presence, reader_to_original(d[FULL_IMAGE], meta), floor

    def outline(self, image: np.ndarray, meta: dict[str, Any], source: str = "<array>") -> Outline:
        """The lesions of one decoded image (the reader's grid, with the reader's ``meta``).

        Raises:
            ImageReadError: the image cannot be preprocessed (too small, non-finite pixels).
        """
        stored, presence, grey, floor = self.maps(image, meta, source)
        lesions, score = find_lesions_and_score(stored, presence, presence_threshold=self.threshold,
                                                **{**self.rules, "min_area_fraction": floor})
        return Outline(presence, lesions, stored, grey, score)

    def read(self, path: str | Path, frame: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """An image file as the segmenter's own reader options read it (one frame of a multi-frame DICOM),
        for :meth:`outline`."""
        return load_image(path, frame_options(self.reader_options, frame))


SegmenterSource = Union[str, Path, Checkpoint, Outliner]


def resolve_segmenter(explicit: SegmenterSource | None, ckpt: Checkpoint | None = None,
                      device: torch.device | str = "cpu") -> Outliner | None:
    """The segmenter of a run: the one given, else the classifier checkpoint's own, else none.

    This is the one place it is chosen, for ``predict``, ``serve`` and ``evaluate``: a pipeline
    checkpoint (``breastai bundle``: the classifier carrying its segmenter) brings its own, and a
    segmenter given explicitly (``--segmenter``) takes its place.

    Args:
        explicit: a path, a loaded segmentation :class:`~breastai.models.checkpoint.Checkpoint`, an
            :class:`Outliner`, or None.
        ckpt: the classifier checkpoint.
        device: where a segmenter loaded here runs.

    Raises:
        CheckpointError: the chosen checkpoint is no segmenter (a classifier given as ``--segmenter``
            is refused naming the flag it belongs to), or unreadable.
    """
    chosen = explicit if explicit is not None else getattr(ckpt, "segmenter", None)
    if chosen is None or isinstance(chosen, Outliner):
        return chosen
    if isinstance(chosen, Checkpoint):
        return Outliner(chosen, device, "<segmenter>" if explicit is not None else "the bundled segmenter")
    return Outliner.from_checkpoint(chosen, device)
