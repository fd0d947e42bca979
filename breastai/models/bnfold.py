"""Batch norm folded into the convolution before it, for inference.

In eval mode a batch-norm layer is a fixed per-channel affine map, so a convolution followed by one
equals a single convolution with rescaled weights and a bias: ``W' = W * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta`` (``m``, ``v`` the running mean and variance, ``g``,
``beta`` the learnt scale and shift). Folding removes one pass over every feature map, forward and
(for Grad-CAM++) backward, which on a CPU is a sizeable share of inference (docs/results.md).

Only pairs whose data flow is known are folded: consecutive children of an ``nn.Sequential``, and
the named pairs of the registry's own building blocks (timm's EfficientNet blocks, torchvision's
ResNet blocks, the segmenter's encoder). A pair is left alone where the convolution's own output is
read by name (a saliency target or a feature tap), since folding changes that output; a folded
batch norm's slot keeps its activation (timm's ``BatchNormAct2d``) or becomes an identity, so the
module names that hooks look up still hold the same values.

Weights in a checkpoint are never folded: adapting batch-norm statistics to a new site
(``breastai adapt``) needs the layers, so folding happens on the loaded copy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def _named_pairs(module: nn.Module) -> Iterator[tuple[str, str]]:
    """(conv, batch norm) child names of ``module`` where the norm reads the conv's output directly."""
    if _plain_sequential(module):
        names = [n for n, _ in module.named_children()]
        yield from zip(names, names[1:])
        return
    yield from _KNOWN_PAIRS.get(type(module).__name__, ())


# Keyed by class name; a class counts only when it comes from one of _KNOWN_MODULES, so an
# unrelated class of the same name is never folded.
_KNOWN_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "EfficientNetFeatures": (("conv_stem", "bn1"),),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "ResNet": (("conv1", "bn1"),),
    "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "_LiteEncoder": (("conv_stem", "bn1"),),
}
_KNOWN_MODULES = ("timm.", "torchvision.models.resnet", "breastai.models.segmenter")


def _plain_sequential(module: nn.Module) -> bool:
    """A Sequential whose forward is Sequential's own: children run in order, each on the last's output."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What a folded batch norm's slot still does: timm's BatchNormAct2d also applies dropout and an
    activation after normalising; a plain batch norm does nothing more."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    rest = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def fold_batchnorm(model: nn.Module, keep: Iterable[str] = ()) -> int:
    """Fold every eval-mode batch norm into the convolution before it, in place.

    Args:
        model: a model in eval mode (layers in training mode are left alone).
        keep: module names (relative to ``model``) whose outputs are read by hooks; a convolution
            named here is not folded. A batch norm named here may be: its slot's output is unchanged.

    Returns:
        The number of batch-norm layers folded.
    """
    keep = set(keep)
    folded = 0
    for prefix, module in list(model.named_modules()):
        if not _plain_sequential(module) and not type(module).__module__.startswith(_KNOWN_MODULES):
            continue
        for conv_name, bn_name in list(_named_pairs(module)):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if not (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d)):
                continue
            if conv.training or bn.training or not bn.track_running_stats or bn.running_mean is None:
                continue
            if f"{prefix}.{conv_name}".lstrip(".") in keep or conv.out_channels != bn.num_features:
                continue
            after = _after_norm(bn)
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, after.eval())
            folded += 1
    return folded
