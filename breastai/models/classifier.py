"""Every image model is a :class:`Classifier`: a backbone producing a pooled embedding and a linear head
producing one malignancy logit. Inputs are grey images in [0, 1] with ``in_chans`` channels (1, or 2
when the lesion mask is a channel); the ImageNet normalisation of pretrained backbones lives inside
the model, so the preprocessing preset is the same for every model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Classifier"]

# Grey-level mean/std of ImageNet (luma of the RGB statistics).
_GREY_MEAN, _GREY_STD = 0.449, 0.226


class Classifier(nn.Module):
    """Backbone + dropout + one-logit head, with the input normalisation built in."""

    def __init__(self, backbone: nn.Module, n_features: int, dropout: float, normalize: bool):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_features, 1)
        self.n_features = n_features
        self.normalize = normalize
        # Both filled by create_model: the constructor arguments beyond name/in_chans/dropout that a
        # checkpoint must record to rebuild the model (output_stride), and the spec's saliency layer.
        self.init_kwargs: dict[str, Any] = {}
        self.target_layer_name = ""

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
    in the image. Zero-started mask weights stay small in a short fine-tune (docs/experiments.md,
    "Crop CNN: the mask channel")."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        conv.weight[:, 1:] = conv.weight[:, :1] / _GREY_STD
