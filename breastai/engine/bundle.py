"""Pipeline checkpoints: a classifier and the segmenter that outlines its lesions, in one file.

``breastai bundle --classifier best.pt --segmenter seg/best.pt --out pipeline.pt`` writes the
classifier's checkpoint (a single model's or an ensemble's) with the segmenter's whole checkpoint
under :attr:`~breastai.models.checkpoint.Checkpoint.segmenter`. Nothing is retrained or refitted:
each part keeps its own weights, calibration, thresholds, configuration and training record, and
the file's one digest covers both. ``load_checkpoint`` of the result gives the classifier with
``segmenter`` set, so a user hands around one file instead of a pair that must be kept matched.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from breastai.models.checkpoint import Checkpoint, CheckpointError, is_segmenter, model_names
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint

__all__ = ["bundle_pipeline", "bundle_files"]

log = logging.getLogger("breastai")


def _what(ckpt: Checkpoint) -> str:
    """A classifier-side checkpoint in a few words, for the refusals."""
    if ckpt.is_pipeline:
        return f"a pipeline ({ckpt.model.name} with the segmenter {model_names(ckpt.segmenter)})"
    return "an ensemble classifier" if ckpt.is_ensemble else f"a classifier ({ckpt.model.name})"


def _modality_mismatch(classifier: Checkpoint, segmenter: Checkpoint) -> str | None:
    """The warning for parts trained on other modalities (None: they agree, or one side records none)."""
    seg = sorted(segmenter.modalities or [])
    parts = classifier.members if classifier.is_ensemble else [classifier]
    cls = sorted({m for p in parts for m in (p.modalities or [])})
    if not seg or not cls or all(sorted(p.modalities or seg) == seg for p in parts):
        return None
    return (f"the classifier was trained on {', '.join(cls)} images and the segmenter on {', '.join(seg)}: "
            "one of them will outline or score images unlike those it learned from")


def bundle_pipeline(classifier: Checkpoint, segmenter: Checkpoint, replace: bool = False,
                    names: tuple[str, str] = ("the classifier", "the segmenter")) -> Checkpoint:
    """A copy of ``classifier`` carrying ``segmenter`` (both otherwise unchanged).

    Args:
        classifier: a single model's or an ensemble's checkpoint.
        segmenter: a segmenter's checkpoint (a single model's or a segmenter ensemble's).
        replace: swap a segmenter the classifier already carries (without it one is refused).
        names: how the two are named in messages (their files).

    Returns:
        The pipeline checkpoint; a modality mismatch between the parts is logged as a warning.

    Raises:
        CheckpointError: the classifier is a segmenter, the segmenter is not one, or the classifier
            already carries a segmenter and ``replace`` is False.
    """
    if is_segmenter(classifier):
        raise CheckpointError(f"{names[0]}: a segmenter ({classifier.model.name}), not a classifier; "
                              "give it as the segmenter (--segmenter)")
    if not is_segmenter(segmenter):
        raise CheckpointError(f"{names[1]}: {_what(segmenter)}, not a segmenter; give a segmenter's best.pt "
                              "(a run of a segmentation model such as configs/busi_seg.yaml)")
    if classifier.is_pipeline and not replace:
        raise CheckpointError(f"{names[0]}: already carries a segmenter ({model_names(classifier.segmenter)}); "
                              "pass --replace to swap it for the one given")
    warning = _modality_mismatch(classifier, segmenter)
    if warning:
        log.warning("warning: %s", warning)
    return dataclasses.replace(classifier, segmenter=segmenter)


def bundle_files(classifier: str | Path, segmenter: str | Path, out: str | Path, replace: bool = False) -> Checkpoint:
    """``breastai bundle``: load both checkpoints (checked), bundle them and write ``out`` atomically.

    Args:
        classifier: the classifier's checkpoint file.
        segmenter: the segmenter's checkpoint file.
        out: the pipeline checkpoint file to write (never one of the two sources).
        replace: see :func:`bundle_pipeline`.

    Returns:
        The written pipeline checkpoint.

    Raises:
        CheckpointError: a source is missing, corrupted, a resume checkpoint, or of the wrong kind.
        ValueError: ``out`` is a folder or one of the sources.
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; --out names the pipeline checkpoint file (e.g. {out / 'pipeline.pt'})")
    for src in (classifier, segmenter):
        if out.exists() and out.resolve() == Path(src).resolve():
            raise ValueError(f"--out {out} is one of the sources: write the pipeline to a new file, so the parts stay")
    pipeline = bundle_pipeline(load_checkpoint(classifier), load_checkpoint(segmenter), replace,
                               names=(str(classifier), str(segmenter)))
    save_checkpoint(out, pipeline)
    return pipeline
