"""Model registry: ``create_model(name, ...)`` builds a binary lesion classifier.

Every model is a :class:`Classifier`: a backbone producing a pooled embedding and a linear head
producing one malignancy logit. Inputs are grey images in [0, 1] with ``in_chans`` channels
(1, or 2 when the lesion mask is a channel); the ImageNet normalisation of pretrained backbones
lives inside the model, so the preprocessing preset is the same for every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from breastai.core.config import CHOICES, ConfigError
from breastai.models.classifier import Classifier, _grey_mask_stem

__all__ = ["ModelSpec", "MODELS", "MASK_INITS", "TASKS", "create_model", "register_model", "list_models", "get_spec",
           "check_model_config", "model_task"]

TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class ModelSpec:
    """Everything the package knows about a registered model, in one place.

    Code that needs a model's metadata (which layer saliency hooks, whether it takes a radiomics
    vector, whether training fits it in closed form, ...) reads it here, by name, instead of
    probing a model instance for attributes.

    A plain :class:`Classifier` is described by ``build(in_chans, pretrained, dropout,
    output_stride) -> (backbone, n_features)``; a model that is not gives ``factory(in_chans=,
    pretrained=, dropout=, **kwargs) -> nn.Module`` instead (``build`` unused).

    Attributes:
        build: backbone builder of a plain :class:`Classifier` (None for ``factory`` models).
        target_layer: saliency target (the last spatial feature map), a module name relative to the
            model; "" when the model has none of its own (see ``image_module``).
        pretrained_available: ImageNet weights can be loaded (``pretrained=True`` is honoured).
        description: one line for listings.
        requires_radiomics: the model is called as ``model(x, radiomics=r)`` (see
            :mod:`breastai.models.fusion`).
        uses_image: the image input matters (False: radiomics only, no saliency map).
        factory: builder of a model that is not a plain :class:`Classifier`.
        strides: output strides offered: 32, or also 16 for a twice finer last feature map (the
            last stage dilated instead of downsampled), i.e. a finer saliency map.
        closed_form: the model is fitted at construction (e.g. sklearn on the training part), so
            training makes one validation pass and takes no gradient steps.
        in_chans: input channel counts the model accepts (1 = grey; 2 = grey + lesion mask).
        image_module: for a model wrapping a registry image model (chosen by its ``backbone``
            argument) as a submodule, that submodule's name; its saliency layer is found there.
        default_backbone: the ``backbone`` such a model uses when none is given.
        ood_layers: intermediate feature maps (module names relative to the model) whose
            channel means the out-of-distribution detector models beside the embedding
            (:mod:`breastai.models.ood`): mid-level texture that a two-class head may discard.
        task: ``classification`` (one malignancy logit) or ``segmentation`` (a
            :class:`~breastai.models.segmenter.LesionSegmenter`: lesion mask and presence logits);
            training, checkpoints and predict branch on it.
    """

    build: Callable[..., tuple[nn.Module, int]] | None
    target_layer: str
    pretrained_available: bool
    description: str
    requires_radiomics: bool = False
    uses_image: bool = True
    factory: Callable[..., nn.Module] | None = None
    strides: tuple[int, ...] = (32,)
    # Later fields go last, with defaults, so registrations written positionally keep working.
    closed_form: bool = False
    in_chans: tuple[int, ...] = (1, 2)
    image_module: str = ""
    default_backbone: str = ""
    ood_layers: tuple[str, ...] = ()
    task: str = "classification"

    def feature_layers(self, backbone: str | None = None) -> tuple[str, ...]:
        """The ``ood_layers`` of a model built from this spec, relative to the model (found in the
        image branch, ``image_module``, for models wrapping a registry image model)."""
        if not self.uses_image:
            return ()
        if not self.image_module:
            return self.ood_layers
        return tuple(f"{self.image_module}.{n}" for n in get_spec(backbone or self.default_backbone).feature_layers())

    def saliency_layer(self, backbone: str | None = None) -> str:
        """The saliency target layer of a model built from this spec, relative to the model.

        Args:
            backbone: the ``backbone`` argument the model was built with; used only by models
                wrapping a registry image model (``image_module``), which default to
                ``default_backbone``.

        Returns:
            A module name (e.g. ``backbone.bn2``, or ``image.backbone.bn2`` for a fusion model);
            "" when saliency does not apply.

        Raises:
            KeyError: ``backbone`` is not registered.
        """
        if not self.uses_image:
            return ""
        if not self.image_module:
            return self.target_layer
        inner = get_spec(backbone or self.default_backbone).saliency_layer()
        return f"{self.image_module}.{inner}" if inner else ""


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec) -> None:
    """Add a model to the registry."""
    MODELS[name] = spec


def list_models(task: str | None = None) -> list[str]:
    """Registered model names (of one ``task`` only, when given: ``classification`` or ``segmentation``)."""
    return sorted(n for n, s in MODELS.items() if task is None or s.task == task)


def get_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``.

    Raises:
        KeyError: unknown model name (the message lists the registered ones).
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return MODELS[name]


MASK_INITS = CHOICES["model.mask_init"]  # ("zero", "grey")


def create_model(name: str, in_chans: int = 1, pretrained: bool = False, dropout: float = 0.2, output_stride: int = 32,
                 mask_init: str = "zero", **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a key of :data:`MODELS` (see :func:`list_models`).
        in_chans: input channels (1 = grey; 2 = grey + lesion mask).
        pretrained: load ImageNet weights (only where ``pretrained_available``).
        dropout: dropout before the head.
        output_stride: 32, or 16 for a twice finer last feature map (and saliency map) where the
            model lists it in ``strides``.
        mask_init: how a pretrained stem starts on the mask channel(s): ``zero`` (the ImageNet
            features are untouched at first) or ``grey`` (the grey-channel weights, scaled as if the
            0/1 mask were a normalised grey image, so the outline drives the pretrained edge
            filters from the first step). Only used where ImageNet weights are loaded.
        **kwargs: model-specific arguments for ``factory`` models (ignored by the others).

    Raises:
        KeyError: unknown model name.
        ValueError: input channels, an output stride or mask_init the model does not offer.
    """
    if mask_init not in MASK_INITS:
        raise ValueError(f"mask_init must be one of {', '.join(MASK_INITS)}, not {mask_init!r}")
    spec = get_spec(name)
    if int(in_chans) not in spec.in_chans:
        raise ValueError(f"model {name!r} takes in_chans {' or '.join(map(str, spec.in_chans))}, not {in_chans}")
    if int(output_stride) not in spec.strides:
        raise ValueError(f"model {name!r} offers output_stride {', '.join(map(str, spec.strides))}, not {output_stride}")
    if spec.factory is not None:
        model = spec.factory(in_chans=in_chans, pretrained=pretrained, dropout=dropout, mask_init=mask_init, **kwargs)
    else:
        backbone, n = spec.build(in_chans, pretrained and spec.pretrained_available, dropout,
                                 output_stride=int(output_stride))
        model = Classifier(backbone, n, dropout, normalize=spec.pretrained_available)
        if mask_init == "grey" and in_chans > 1 and pretrained and spec.pretrained_available:
            _grey_mask_stem(model)
        if output_stride != 32:  # recorded in the checkpoint (training saves init_kwargs), so inference rebuilds it
            model.init_kwargs = {"output_stride": int(output_stride)}
    # Kept on the instance for code that is handed a bare model (saliency, predict); the spec is the source.
    model.target_layer_name = spec.saliency_layer(kwargs.get("backbone"))
    return model


def model_task(cfg: dict[str, Any]) -> str:
    """The task of the configured model (``model.name``'s :attr:`ModelSpec.task`).

    Raises:
        KeyError: the model is not registered.
    """
    return get_spec(cfg["model"]["name"]).task


def check_model_config(cfg: dict[str, Any]) -> None:
    """Refuse a configuration naming a model (or fusion backbone) that is not registered.

    Checked where a run starts (:func:`breastai.engine.run.main`), before any data is read; the
    configuration layer itself knows no models.

    Raises:
        ConfigError: ``model.name`` or ``model.backbone`` is not in :data:`MODELS`.
    """
    for key in ("name", "backbone"):
        if cfg["model"][key] not in MODELS:
            raise ConfigError(f"model.{key} must be one of {', '.join(MODELS)}, got {cfg['model'][key]!r}")
    if get_spec(cfg["model"]["backbone"]).task != "classification":
        raise ConfigError(f"model.backbone must be a classifier, not the segmenter {cfg['model']['backbone']!r}")
    if model_task(cfg) == "classification" and len(cfg["data"]["classes"]) != 2:
        raise ConfigError("data.classes must list exactly two classes (negative first, positive second)")
    if model_task(cfg) == "segmentation":
        if cfg["preprocess"]["mask_channel"]:
            raise ConfigError("a segmenter takes the image alone: set preprocess.mask_channel=false")
        if cfg["preprocess"]["mode"] != "whole":
            raise ConfigError("a segmenter looks for the lesion in the whole image: set preprocess.mode=whole")
        if int(cfg["preprocess"]["size"]) % 32:
            raise ConfigError(f"a segmenter's preprocess.size must be a multiple of 32, got {cfg['preprocess']['size']}")
