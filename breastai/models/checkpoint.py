"""Self-contained checkpoints: everything needed to rebuild the model and its preprocessing.

A checkpoint holds weights, model name and arguments, the resolved config (which includes the
preprocessing preset), class names, operating threshold, calibration temperature, metrics and
package versions. It is plain tensors and Python containers, so it loads with
``torch.load(weights_only=True)``; it is written to a temporary file and renamed, so a crash
never leaves a broken checkpoint behind.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

import torch

from breastai.core.config import fill_missing
from breastai.models.classifier import Classifier
from breastai.models.registry import create_model

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "model_from_checkpoint", "package_versions"]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or incompatible; the message says which and why."""


@functools.lru_cache(maxsize=1)  # seven metadata lookups; written into every checkpoint
def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("breastai", "torch", "torchvision", "monai", "timm", "numpy", "pydicom"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file in the same folder, then rename)."""
    from breastai.core.files import atomic_write

    state = {"format_version": FORMAT_VERSION, "versions": dict(package_versions()), **state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", resume: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check it is a breastai checkpoint.

    Args:
        path: ``best.pt`` (or an ensemble's), or with ``resume=True`` a training run's ``last.pt``.
        map_location: where tensors are loaded.
        resume: accept a resume checkpoint. Without it one is refused: its weights are the last
            epoch's and its temperature and threshold are placeholders, so scores from it would be
            uncalibrated and cut at 0.5 without a word.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a usable checkpoint"
        raise CheckpointError(f"{path}: not a readable breastai checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state or "weights" not in state:
        raise CheckpointError(f"{path}: not a breastai checkpoint (no model description or weights)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format_version']} is newer than this breastai supports ({FORMAT_VERSION})"
        )
    if "optimizer" in state and not resume:
        raise CheckpointError(f"{path}: a resume checkpoint (the last epoch, not calibrated, no operating threshold); "
                              f"use best.pt from the same folder")
    for s in state["ensemble"]["members"] if "ensemble" in state else [state]:
        if isinstance(s.get("config"), dict):
            s["config"] = fill_missing(s["config"])
    return state


def model_from_checkpoint(state: dict[str, Any]) -> Classifier:
    """Rebuild the model described in ``state`` and load its weights (no config file needed)."""
    spec = dict(state["model"])
    try:
        model = create_model(**{**spec, "pretrained": False})
        model.load_state_dict(state["weights"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint model {spec.get('name')!r} cannot be rebuilt here: {exc}") from exc
    model.eval()
    return model
