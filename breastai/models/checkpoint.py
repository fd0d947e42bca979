"""Self-contained checkpoints: everything needed to rebuild the model and its preprocessing.

A checkpoint holds weights, model name and arguments, the resolved config (which includes the
preprocessing preset), class names, operating threshold, calibration temperature, metrics and
package versions. In memory it is a :class:`Checkpoint`; on disk it is the dict of plain tensors
and Python containers that :meth:`Checkpoint.to_state` builds, so it loads with
``torch.load(weights_only=True)``. Files are written and read by :mod:`breastai.models.checkpoint_io`
(``save_checkpoint``, ``load_checkpoint``), which reads through :meth:`Checkpoint.from_state`, the
one place that knows the on-disk keys (files written before a key existed still load).

Every dict :meth:`Checkpoint.to_state` builds carries ``digest``: ``sha256:<hex>`` of everything
else in it (:func:`state_digest`: each tensor's name, dtype, shape and bytes, and every other value
in a canonical form, an ensemble's members and a bundled segmenter included), and ``load_checkpoint`` refuses a file
whose contents no longer match it. torch reads a file whose tensor bytes were damaged without a word
(it does not check the zip's CRCs), and damaged weights score garbage or NaN; a checkpoint written
before the digest existed has nothing to be checked against and loads as before. The format
version stays 1: older breastai ignores the key it does not know.

A pipeline checkpoint is a classifier's (a single model's or an ensemble's) that also carries the
segmenter which outlines the lesions it scores (:attr:`Checkpoint.segmenter`, on disk the
segmenter's whole dict under ``segmenter``), so one file is all a user hands around. Older breastai
keeps the key it does not know and scores with the classifier alone.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from breastai.models.adaptation import Adaptation
from breastai.models.bnfold import fold_batchnorm
from breastai.models.calibration import Recalibration
from breastai.models.digest import content_digest
from breastai.models.ood import FeatureDensity
from breastai.models.registry import ModelSpec, create_model, get_spec

__all__ = ["FORMAT_VERSION", "Checkpoint", "ModelArgs", "CheckpointError", "model_from_checkpoint", "inference_model",
           "package_versions", "state_digest", "weights_digest", "checkpoint_task", "is_segmenter", "model_names",
           "reads_mask"]

FORMAT_VERSION = 1

# Top-level keys of the on-disk dict that Checkpoint reads into its own fields; any other key is
# kept in ``Checkpoint.extra`` so that loading and saving again loses nothing.
_OPTIONAL = ("logit_offset", "epoch", "best_epoch", "seen_images", "modalities", "ood")
_RESUME = ("optimizer", "scheduler", "early_stop", "epoch_seconds", "ema")
_KNOWN = {"format_version", "versions", "model", "weights", "ensemble", "config", "classes", "preprocess",
          "threshold", "temperature", "metrics", "digest", "recalibration", "adaptation", "segmenter", *_OPTIONAL, *_RESUME}
_MODEL_KEYS = ("name", "in_chans", "dropout")


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


@dataclass
class ModelArgs:
    """The checkpoint's ``model`` entry: the registry name and the arguments that rebuild the model.

    Attributes:
        name: registry name (``ensemble`` for an ensemble checkpoint, which has no single model).
        in_chans: input channels (None for an ensemble).
        dropout: dropout before the head (None for an ensemble).
        init_kwargs: model-specific constructor arguments (the model's ``init_kwargs``, e.g.
            ``output_stride``, or a fusion model's ``backbone`` and feature names).
    """

    name: str
    in_chans: int | None = None
    dropout: float | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        """The model's registry entry.

        Raises:
            KeyError: the name is not registered here (or this is an ensemble).
        """
        return get_spec(self.name)

    @property
    def saliency_layer(self) -> str:
        """The rebuilt model's saliency target layer ("" when saliency does not apply)."""
        return self.spec.saliency_layer(self.init_kwargs.get("backbone"))

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~breastai.models.registry.create_model` besides the name."""
        fixed = {"in_chans": self.in_chans, "dropout": self.dropout}
        return {**{k: v for k, v in fixed.items() if v is not None}, **self.init_kwargs}

    def to_state(self) -> dict[str, Any]:
        """The on-disk ``model`` entry: ``{"name", "in_chans", "dropout", **init_kwargs}``."""
        return {"name": self.name, **self.create_kwargs()}

    @classmethod
    def from_state(cls, entry: Mapping[str, Any]) -> ModelArgs:
        """Read an on-disk ``model`` entry."""
        return cls(
            name=str(entry["name"]),
            in_chans=int(entry["in_chans"]) if entry.get("in_chans") is not None else None,
            dropout=float(entry["dropout"]) if entry.get("dropout") is not None else None,
            init_kwargs={k: v for k, v in entry.items() if k not in _MODEL_KEYS},
        )


@dataclass(eq=False)  # identity equality: comparing tensors field by field means nothing here
class Checkpoint:
    """Everything a checkpoint holds, typed.

    A field that is None was not in the file and is not written back (a resume checkpoint has no
    ``logit_offset``, an ensemble no ``epoch``), so the on-disk keys stay exactly what they were.

    Attributes:
        model: name and constructor arguments of the model.
        weights: the model's state dict (empty for an ensemble).
        config: the resolved config of the run (includes the preprocessing preset).
        classes: class names, negative first.
        threshold: operating threshold on the calibrated probability.
        temperature: calibration temperature.
        logit_offset: subtracted from the logit before the temperature (the log of the loss's
            positive weight when training weighted the classes; after ``breastai calibrate`` it also
            holds the local intercept, see ``recalibration``); None: not recorded, i.e. 0.
        epoch: the epoch these weights are from.
        best_epoch: the epoch selected on validation.
        metrics: validation (and test) metrics.
        seen_images: image digests of the ``train`` and ``val`` parts (None: not recorded).
        modalities: imaging modalities of the training images (``["US"]``); predict refuses a DICOM
            input of another modality. None: unknown (not recorded, or some image's unknown), which
            refuses nothing. An ensemble's members carry their own.
        ood: the out-of-distribution detector fitted on the training part's embeddings
            (:class:`~breastai.models.ood.FeatureDensity`); None: not fitted (older checkpoints,
            ``eval.ood_quantile: 0``). An ensemble's members carry their own.
        optimizer: resume only: the optimiser's state dict.
        scheduler: resume only: the learning-rate scheduler's state dict.
        early_stop: resume only: best AUC, its epoch and the epochs without gain.
        epoch_seconds: resume only: the duration of each epoch so far.
        ema: resume only: the weight average's state dict (with ``train.ema``).
        members: ensemble only: the member checkpoints (None: not an ensemble).
        member_weights: ensemble only: weight of each member's calibrated log-odds.
        bias: ensemble only: added to the weighted sum.
        combine: ensemble only: how the weights were fitted (``mean`` or ``stack``).
        recalibration: the local recalibrations (``breastai calibrate``) since training, oldest
            first; None: never recalibrated.
        adaptation: the batch-norm adaptations (``breastai adapt``) since training, oldest first;
            None: never adapted.
        segmenter: pipeline only: the segmenter checkpoint that outlines the lesions this
            classifier scores (``breastai bundle``); None: a plain checkpoint. A segmenter never
            carries one; a bundled segmenter is a best checkpoint (a model's, or an ensemble of them).
        format_version: the format the checkpoint was read in (0: written before it was recorded);
            a saved checkpoint is always written in :data:`FORMAT_VERSION`.
        versions: package versions it was written with (None: fill in the running ones at save).
        extra: top-level keys this version does not know, kept so a re-save loses nothing.
    """

    model: ModelArgs
    weights: dict[str, torch.Tensor] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    classes: list[str]
    threshold: float = 0.5
    temperature: float = 1.0
    logit_offset: float | None = None
    epoch: int | None = None
    best_epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)
    seen_images: dict[str, list[str]] | None = field(default=None, repr=False)
    modalities: list[str] | None = None
    ood: FeatureDensity | None = field(default=None, repr=False)
    optimizer: dict[str, Any] | None = field(default=None, repr=False)
    scheduler: dict[str, Any] | None = field(default=None, repr=False)
    early_stop: dict[str, Any] | None = field(default=None, repr=False)
    epoch_seconds: list[float] | None = field(default=None, repr=False)
    ema: dict[str, Any] | None = field(default=None, repr=False)
    members: list[Checkpoint] | None = None
    member_weights: list[float] = field(default_factory=list)
    bias: float = 0.0
    combine: str = ""
    recalibration: list[Recalibration] | None = None
    adaptation: list[Adaptation] | None = None
    segmenter: Checkpoint | None = None
    format_version: int = FORMAT_VERSION
    versions: dict[str, str] | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_ensemble(self) -> bool:
        """An ensemble checkpoint: its members score, it has no single model."""
        return self.members is not None

    @property
    def is_pipeline(self) -> bool:
        """A pipeline checkpoint: a classifier carrying its segmenter."""
        return self.segmenter is not None

    @property
    def is_resume(self) -> bool:
        """A training run's ``last.pt``: last epoch's weights, placeholder calibration and threshold."""
        return self.optimizer is not None

    @property
    def calibration(self) -> dict[str, float]:
        """``temperature`` and ``logit_offset`` as :mod:`breastai.models.calibration` takes them."""
        return {"temperature": float(self.temperature), "logit_offset": float(self.logit_offset or 0.0)}

    def to_state(self) -> dict[str, Any]:
        """The on-disk dict (plain tensors and containers), the one place it is built.

        Its keys are those breastai has always written, so older code loads it, and ``digest``
        last (:func:`state_digest` of the rest), which older code ignores.

        Raises:
            CheckpointError: the checkpoint carries a segmenter it cannot (see ``segmenter``).
        """
        _check_pipeline(self)
        state: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "versions": dict(self.versions if self.versions is not None else package_versions()),
            "model": self.model.to_state(),
            "weights": dict(self.weights),
        }
        if self.members is not None:
            state["ensemble"] = {"members": [m.to_state() for m in self.members],
                                 "weights": [float(w) for w in self.member_weights], "bias": float(self.bias),
                                 "combine": self.combine}
        state.update(config=self.config, classes=list(self.classes))
        if "preprocess" in self.config:  # a copy at the top level, as older readers look for it there
            state["preprocess"] = self.config["preprocess"]
        state.update(threshold=float(self.threshold), temperature=float(self.temperature))
        for key in ("epoch", "best_epoch"):
            if getattr(self, key) is not None:
                state[key] = getattr(self, key)
        state["metrics"] = self.metrics
        for key in ("logit_offset", "seen_images", "modalities", *_RESUME):
            if getattr(self, key) is not None:
                state[key] = getattr(self, key)
        if self.ood is not None:
            state["ood"] = self.ood.to_state()
        for key in ("recalibration", "adaptation"):
            if getattr(self, key) is not None:
                state[key] = [r.to_state() for r in getattr(self, key)]
        if self.segmenter is not None:
            state["segmenter"] = self.segmenter.to_state()
        state.update(self.extra)
        state["digest"] = state_digest(state)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Checkpoint:
        """Read an on-disk dict (of any format version up to :data:`FORMAT_VERSION`).

        Keys added after a checkpoint was written take the value their absence meant (no
        ``temperature``: 1, no ``classes``: the config's).

        Raises:
            CheckpointError: not a breastai checkpoint, a malformed one, or one carrying a segmenter it
                cannot.
        """
        if not isinstance(state, Mapping) or "model" not in state or "weights" not in state:
            raise CheckpointError("not a breastai checkpoint (no model description or weights)")
        try:
            config = dict(state.get("config") or {})
            ens = state.get("ensemble")
            ckpt = cls(
                model=ModelArgs.from_state(state["model"]),
                weights=dict(state["weights"]),
                config=config,
                classes=list(state.get("classes") or (config.get("data") or {}).get("classes") or []),
                threshold=float(state.get("threshold", 0.5)),
                temperature=float(state.get("temperature", 1.0)),
                logit_offset=_opt(float, state.get("logit_offset")),
                epoch=_opt(int, state.get("epoch")),
                best_epoch=_opt(int, state.get("best_epoch")),
                metrics=dict(state.get("metrics") or {}),
                seen_images=state.get("seen_images"),
                modalities=None if state.get("modalities") is None else [str(m) for m in state["modalities"]],
                ood=None if state.get("ood") is None else FeatureDensity.from_state(state["ood"]),
                **{key: state.get(key) for key in _RESUME},
                members=None if ens is None else [cls.from_state(m) for m in ens["members"]],
                member_weights=[] if ens is None else [float(w) for w in ens["weights"]],
                bias=0.0 if ens is None else float(ens["bias"]),
                combine="" if ens is None else str(ens.get("combine", "mean")),
                recalibration=None if state.get("recalibration") is None
                else [Recalibration.from_state(r) for r in state["recalibration"]],
                adaptation=None if state.get("adaptation") is None
                else [Adaptation.from_state(r) for r in state["adaptation"]],
                segmenter=None if state.get("segmenter") is None else cls.from_state(state["segmenter"]),
                format_version=int(state.get("format_version", 0)),
                versions=dict(state["versions"]) if state.get("versions") is not None else None,
                extra={k: v for k, v in state.items() if k not in _KNOWN},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"malformed breastai checkpoint ({type(exc).__name__}: {exc})") from exc
        _check_pipeline(ckpt)
        return ckpt


def _opt(cast: Any, value: Any) -> Any:
    return None if value is None else cast(value)


def checkpoint_task(ckpt: Checkpoint) -> str:
    """What the checkpoint's model does: ``classification`` or ``segmentation`` (an ensemble: its members').

    Raises:
        CheckpointError: its model is not registered in this breastai.
    """
    if ckpt.is_ensemble:
        return checkpoint_task(ckpt.members[0]) if ckpt.members else "classification"
    try:
        return ckpt.model.spec.task
    except KeyError as exc:
        raise CheckpointError(f"its model {ckpt.model.name!r} is not registered in this breastai") from exc


def model_names(ckpt: Checkpoint) -> str:
    """The model in a few words: its registry name, an ensemble's ``ensemble of N name``."""
    return f"ensemble of {len(ckpt.members)} {ckpt.members[0].model.name}" if ckpt.members else ckpt.model.name


def reads_mask(ckpt: Checkpoint) -> bool:
    """Whether a single classifier's score depends on the lesion mask (a crop, an outline channel or
    radiomics); a whole-image model scores the image whatever mask it is given.

    Raises:
        CheckpointError: its model is not registered in this breastai.
    """
    pre = ckpt.config.get("preprocess") or {}
    try:
        radiomics = ckpt.model.spec.requires_radiomics
    except KeyError as exc:
        raise CheckpointError(f"its model {ckpt.model.name!r} is not registered in this breastai") from exc
    return pre.get("mode") == "crop" or bool(pre.get("mask_channel")) or radiomics


def is_segmenter(ckpt: Checkpoint) -> bool:
    """The checkpoint is a segmenter's (it outlines lesions; it gives no malignancy score).

    Raises:
        CheckpointError: its model is not registered in this breastai.
    """
    return checkpoint_task(ckpt) == "segmentation"


def _check_pipeline(ckpt: Checkpoint) -> None:
    """Refuse a segmenter where none can be: on a segmenter, or one that is no segmenter's best checkpoint
    (a single model's, or an ensemble of them).

    A model this breastai does not know is let through here (its task is unknown, and it cannot be
    rebuilt anyway); :func:`is_segmenter` names it where it matters.
    """
    seg = ckpt.segmenter
    if seg is None:
        return

    def task(c: Checkpoint) -> str | None:
        try:
            return checkpoint_task(c)
        except CheckpointError:
            return None

    why = ("a segmenter cannot carry a segmenter" if task(ckpt) == "segmentation"
           else "its segmenter is a resume checkpoint (last.pt)" if seg.is_resume
           else f"its segmenter is a classifier ({seg.model.name})" if task(seg) == "classification" else None)
    if why is not None:
        raise CheckpointError(f"not a valid pipeline checkpoint: {why}")


def state_digest(state: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of an on-disk dict, its own ``digest`` entry left out.

    Covers the weights (every tensor: its key, dtype, shape and bytes) and the rest of the state
    (config, classes, threshold, temperature, offset, metrics, seen images, modalities, model arguments, resume
    extras, an ensemble's members with their weights, a bundled segmenter) in a canonical form: keys in sorted order, so
    the same contents give the same digest however the dict was built, on any device.
    """
    return content_digest({k: v for k, v in state.items() if k != "digest"})


def weights_digest(ckpt: Checkpoint) -> str:
    """``sha256:<hex>`` of the model weights alone (an ensemble's: its members', in order).

    Unlike ``digest`` it ignores calibration, threshold and metrics: a recalibrated checkpoint has
    the weights digest of the checkpoint it came from; an adapted one (new batch-norm statistics) has
    another, with the same :func:`~breastai.models.adaptation.learnt_weights_digest`. A pipeline's is
    its classifier's (its segmenter's is ``weights_digest(ckpt.segmenter)``).
    """
    return content_digest([m.weights for m in ckpt.members] if ckpt.is_ensemble else ckpt.weights)


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the model described in ``ckpt`` and load its weights (no config file needed), in eval mode.

    Raises:
        CheckpointError: an ensemble (it has no single model), or a model that cannot be rebuilt here.
    """
    if ckpt.is_ensemble:
        raise CheckpointError("an ensemble checkpoint has no single model; score it through its members")
    try:
        model = create_model(ckpt.model.name, **{**ckpt.model.create_kwargs(), "pretrained": False})
        model.load_state_dict(ckpt.weights)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint model {ckpt.model.name!r} cannot be rebuilt here: {exc}") from exc
    model.eval()
    return model


def inference_model(ckpt: Checkpoint, device: torch.device | str, keep: Sequence[str] = ()) -> nn.Module:
    """The model of ``ckpt`` ready to score, for every scorer: rebuilt (:func:`model_from_checkpoint`), on
    ``device``, in eval mode, each batch norm folded into the convolution before it
    (:func:`~breastai.models.bnfold.fold_batchnorm`; the modules named in ``keep``, read by hooks, keep
    their outputs), its weights frozen (saliency needs activation gradients only) and stored
    channels-last: convolutions run faster on CPU (oneDNN) and tensor cores in that layout, so callers
    pass inputs as ``x.contiguous(memory_format=torch.channels_last)``; outputs differ only by float
    rounding.

    Never written back: ``adapt`` re-estimates the batch-norm statistics folding removes, and the
    checkpoint's digests stay those of its own weights (:func:`weights_digest`).
    """
    model = model_from_checkpoint(ckpt).to(device).eval()
    fold_batchnorm(model, keep=keep)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)
