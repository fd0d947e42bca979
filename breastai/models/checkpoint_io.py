"""Checkpoint files: written atomically, read back safely and checked against their digest.

:func:`save_checkpoint` writes :meth:`~breastai.models.checkpoint.Checkpoint.to_state` to a
temporary file and renames it, so a crash never leaves a broken checkpoint behind.
:func:`load_checkpoint` reads it with ``torch.load(weights_only=True)`` (no code in a file is ever
run), refuses a file whose contents differ from the digest written with them (torch does not check
the zip's CRCs, and damaged weights score garbage or NaN), and rebuilds the
:class:`~breastai.models.checkpoint.Checkpoint`, filling in config keys added since it was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from breastai.core.config import fill_missing
from breastai.models.checkpoint import FORMAT_VERSION, Checkpoint, CheckpointError, state_digest

__all__ = ["save_checkpoint", "load_checkpoint"]

_DIGEST = "sha256"


def _check_digest(path: Path, state: Any, what: str = "") -> None:
    """Refuse a file whose contents differ from the digest written with them.

    A file without a digest was written before checkpoints carried one: it cannot be checked, but
    the members of an ensemble that an older breastai built from newer runs still carry theirs.
    One digest covers all of a file written now, its members included.
    """
    if not isinstance(state, Mapping):
        return
    written = state.get("digest")
    if written is None:
        ens = state.get("ensemble")
        for i, member in enumerate((ens.get("members") or []) if isinstance(ens, Mapping) else []):
            _check_digest(path, member, f"{what}member {i + 1}: ")
        if state.get("segmenter") is not None:
            _check_digest(path, state["segmenter"], f"{what}segmenter: ")
        return
    if not isinstance(written, str) or not written.startswith(f"{_DIGEST}:"):
        raise CheckpointError(f"{path}: {what}its digest {str(written)[:40]!r} is not one this breastai can check "
                              "(corrupted, or written by a newer breastai)")
    read = state_digest(state)
    if read != written:
        n = len(_DIGEST) + 13
        raise CheckpointError(f"{path}: {what}corrupted: its contents do not match the digest written with it "
                              f"(written {written[:n]}..., read {read[:n]}...); the file changed after it was saved: "
                              "use an intact copy or train again")


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt.to_state()`` atomically (temporary file in the same folder, then rename).

    Raises:
        TypeError: ``ckpt`` is not a :class:`Checkpoint`.
    """
    from breastai.core.files import atomic_write

    if not isinstance(ckpt, Checkpoint):
        raise TypeError(f"save_checkpoint takes a Checkpoint, not {type(ckpt).__name__}")
    state = ckpt.to_state()
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", resume: bool = False) -> Checkpoint:
    """Load a checkpoint safely (``weights_only=True``) and check it is an intact breastai checkpoint.

    Its contents must match the digest written with them (:func:`state_digest`); a file written
    before checkpoints carried a digest loads unchecked.

    Config keys added after the checkpoint was written are filled in from the defaults (the
    checkpoint behaved as their defaults), for the model, or for each member of an ensemble, and
    for a pipeline's segmenter. A pipeline file loads as its classifier with ``segmenter`` set.

    Args:
        path: ``best.pt`` (or an ensemble's), or with ``resume=True`` a training run's ``last.pt``.
        map_location: where tensors are loaded.
        resume: accept a resume checkpoint. Without it one is refused: its weights are the last
            epoch's and its temperature and threshold are placeholders, so scores from it would be
            uncalibrated and cut at 0.5 without a word.

    Raises:
        CheckpointError: missing, unreadable, corrupted (its contents differ from the digest
            written with them), not a breastai checkpoint, too new, or a resume checkpoint without
            ``resume``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a usable checkpoint"
        raise CheckpointError(f"{path}: not a readable breastai checkpoint ({_load_failure(exc)})") from exc
    if isinstance(state, dict) and state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']} is newer than this breastai supports ({FORMAT_VERSION})"
        )
    _check_digest(path, state)
    try:
        ckpt = Checkpoint.from_state(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if ckpt.is_resume and not resume:
        raise CheckpointError(f"{path}: a resume checkpoint (the last epoch, not calibrated, no operating threshold); "
                              f"use best.pt from the same folder")
    parts = ckpt.members if ckpt.is_ensemble else [ckpt]
    for c in [*parts, ckpt.segmenter] if ckpt.is_pipeline else parts:
        c.config = fill_missing(c.config)
    return ckpt


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load`` refused a file, in one line. Torch's own text for a refused object advises
    loading with ``weights_only=False``, which would run whatever code the file holds: never passed on."""
    text = str(exc)
    if "weights_only" in text or "Unpickl" in type(exc).__name__:
        return "a safe load refuses its contents: not written by breastai, or damaged"
    if "zip archive" in text or "central directory" in text:
        return "an incomplete or damaged file: truncated, or not a PyTorch checkpoint"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
