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

__all__ = ["ModelSpec", "MODELS", "MASK_INITS", "create_model", "register_model", "list_models", "check_model_config"]



@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: ``build(in_chans, pretrained, dropout, output_stride) -> (backbone, n_features)``.

    ``output_stride`` (32, or 16 where ``strides`` lists it) trades compute for a finer last
    feature map, i.e. a finer saliency map: 16 dilates the last stage instead of downsampling it.

    Models that are not a plain :class:`Classifier` give ``factory(in_chans=, pretrained=,
    dropout=, **kwargs) -> nn.Module`` instead (``build`` unused); ``requires_radiomics`` models
    are called as ``model(x, radiomics=r)`` (see :mod:`breastai.models.fusion`).
    """

    build: Callable[..., tuple[nn.Module, int]] | None
    target_layer: str  # saliency target (last spatial feature map), relative to the model; "" if none or
    # if the factory's model names its own (fusion models: image.<their backbone's target layer>)
    pretrained_available: bool
    description: str
    requires_radiomics: bool = False
    uses_image: bool = True
    factory: Callable[..., nn.Module] | None = None
    strides: tuple[int, ...] = (32,)


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec) -> None:
    """Add a model to the registry."""
    MODELS[name] = spec


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(MODELS)




















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
        ValueError: an output stride or mask_init the model does not offer.
    """
    if mask_init not in MASK_INITS:
        raise ValueError(f"mask_init must be one of {', '.join(MASK_INITS)}, not {mask_init!r}")
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    spec = MODELS[name]
    if int(output_stride) not in spec.strides:
        raise ValueError(f"model {name!r} offers output_stride {', '.join(map(str, spec.strides))}, not {output_stride}")
    if spec.factory is not None:
        return spec.factory(in_chans=in_chans, pretrained=pretrained, dropout=dropout, mask_init=mask_init, **kwargs)
    backbone, n = spec.build(in_chans, pretrained and spec.pretrained_available, dropout, output_stride=int(output_stride))
    model = Classifier(backbone, n, dropout, normalize=spec.pretrained_available)
    if mask_init == "grey" and in_chans > 1 and pretrained and spec.pretrained_available:
        _grey_mask_stem(model)
    model.target_layer_name = spec.target_layer
    if output_stride != 32:  # recorded in the checkpoint (training saves init_kwargs), so inference rebuilds it
        model.init_kwargs = {"output_stride": int(output_stride)}
    return model




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
