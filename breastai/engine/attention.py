"""Lesion attention loss: a whole-image model should find its evidence on the lesion.

A whole-image CNN fine-tuned on a few hundred ultrasound frames learns whatever separates the
classes in that dataset: posterior shadowing below the lesion, calipers, text, the scanner's
frame. Its Grad-CAM then points next to the lesion rather than at it (docs/experiments.md,
"Saliency"), and what it learned transfers poorly to other sites. With ``train.attention_loss``
> 0, training adds a term that asks the class-activation map of the last feature map to put the
evidence for the true class on the lesion mask (in the spirit of "right for the right reasons" and
guided attention, GAIN). Masks are needed only in training; inference stays mask-free.

For a feature map ``A`` (C, h, w) feeding global pooling and the one-logit head ``w``, the
class-activation map is ``CAM = sum_c w_c A_c`` (its mean over positions plus the bias is the
logit). With ``s = +1`` for malignant and ``-1`` for benign samples and ``M`` the mask cells
(cells the lesion touches):

    p = softmax(s * CAM)  over the h*w positions
    L = -log( sum_{(i,j) in M} p_ij )         averaged over samples with a non-empty mask

so ``L = 0`` when all of the map's evidence for the true class lies on the lesion.

Which cells are the lesion's (``train.attention_cells``): ``touched`` counts every cell the mask
touches, so evidence on a cell that only grazes the outline is rewarded too; ``covered`` counts the
cells at least half covered by the mask (for a lesion smaller than that, its best-covered cell).
An upsampled map peaks near a cell's centre, so ``covered`` asks for what the pointing game checks:
the maximum inside the lesion, not beside it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CELLS", "LesionAttentionLoss", "cam_attention_loss", "lesion_cells", "PointingGame"]


CELLS = ("touched", "covered")


def _check_rule(rule: str) -> None:
    if rule not in CELLS:
        raise ValueError(f"train.attention_cells must be one of {', '.join(CELLS)}, got {rule!r}")


def lesion_cells(mask: torch.Tensor, shape: tuple[int, int], rule: str = "touched") -> torch.Tensor:
    """(B, h*w) bool: the feature-map cells that count as the lesion's (see the module docstring).

    Args:
        mask: (B, 1, H, W) lesion masks on the network input grid.
        shape: (h, w) of the feature map.
        rule: ``touched`` or ``covered``.
    """
    _check_rule(rule)
    if rule == "touched":
        return F.adaptive_max_pool2d(mask.float(), shape)[:, 0].flatten(1) > 0.5
    cover = F.adaptive_avg_pool2d(mask.float(), shape)[:, 0].flatten(1)
    best = cover.amax(1, keepdim=True)
    return (cover >= 0.5) | ((cover >= best) & (best > 0))


def cam_attention_loss(cam: torch.Tensor, mask: torch.Tensor, label: torch.Tensor, cells: str = "touched") -> torch.Tensor:
    """The loss of the module docstring.

    Args:
        cam: (B, h, w) class-activation maps (malignancy evidence).
        mask: (B, 1, H, W) or (B, H, W) lesion masks on the network input grid.
        label: (B,) 1 malignant, 0 benign; other values are ignored.
        cells: which cells are the lesion's, ``touched`` or ``covered``.

    Returns:
        Scalar loss; 0 (with a graph) when no sample has a usable mask.
    """
    if mask.ndim == 3:
        mask = mask[:, None]
    cells = lesion_cells(mask, cam.shape[-2:], cells)
    n_in = cells.sum(1)
    usable = (n_in > 0) & (n_in < cells.shape[1]) & ((label == 0) | (label == 1))
    if not bool(usable.any()):
        return cam.sum() * 0.0
    sign = (2.0 * label.float() - 1.0)[:, None]
    logp = F.log_softmax(sign * cam.float().flatten(1), dim=1)
    inside = torch.logsumexp(logp.masked_fill(~cells, float("-inf")), dim=1)
    return -inside[usable].mean()


class LesionAttentionLoss:
    """Hooks the model's target layer and turns a batch's masks into the attention loss.

    Args:
        model: a registry image model (``Classifier``: pooled target layer -> one-logit ``head``);
            a DDP wrapper is looked through.
        weight: factor of the loss added to the classification loss.
        cells: which feature-map cells are the lesion's, ``touched`` or ``covered``.
        layer: the hooked feature map, a module name (training passes its spec's
            :meth:`~breastai.models.registry.ModelSpec.saliency_layer`); None: the model's own
            ``target_layer_name``, which :func:`~breastai.models.registry.create_model` sets from the spec.
    """

    def __init__(self, model: nn.Module, weight: float, cells: str = "touched", layer: str | None = None):
        raw = model.module if hasattr(model, "module") else model
        if layer is None:
            layer = getattr(raw, "target_layer_name", "")
        head = getattr(raw, "head", None)
        modules = dict(raw.named_modules())
        if not layer or layer not in modules or not isinstance(head, nn.Linear) or head.out_features != 1:
            raise ValueError(
                "train.attention_loss needs an image model whose last feature map is pooled into a one-logit "
                f"linear head (the registry CNNs); {type(raw).__name__} has none"
            )
        _check_rule(cells)  # at construction, not at the first batch
        self.head, self.weight, self.cells, self._feat = head, float(weight), cells, None
        modules[layer].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._feat = output if module.training else None

    def __call__(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        """Weighted loss for the batch just passed forward (needs ``batch['mask']``)."""
        feat, self._feat = self._feat, None
        if feat is None:
            raise RuntimeError("attention loss: no feature map captured; call it right after a training forward pass")
        if feat.shape[1] != self.head.in_features:
            raise ValueError(
                f"train.attention_loss: the target layer has {feat.shape[1]} channels but the head takes "
                f"{self.head.in_features} features; the class-activation map is undefined for this model"
            )
        if "mask" not in batch:
            raise ValueError("train.attention_loss needs lesion masks in the datalist")
        cam = torch.einsum("bchw,c->bhw", feat.float(), self.head.weight[0].float())
        return self.weight * cam_attention_loss(cam, batch["mask"].to(device), batch["label"].to(device), self.cells)


class PointingGame:
    """Pointing game of Grad-CAM++ on the network input grid, for a model in training.

    Training logs it per epoch for the validation part's malignant images, so a run shows whether
    its maps follow the lesion (the held-out measure in the original geometry is
    ``benchmarks/saliency_pointing.py``). Build it before any hook is registered on the trained
    model: it keeps one frozen copy for the explainer (which hooks its model and switches off
    in-place ops), and each call loads the current weights into that copy.

    Args:
        model: the registry image model being trained (not a DDP wrapper).
    """

    def __init__(self, model: nn.Module):
        from breastai.models.saliency import SaliencyExplainer, frozen_copy

        self.net = frozen_copy(model).float()
        self.explain = SaliencyExplainer(self.net, "gradcam++")

    def __call__(self, model: nn.Module, dataset: Any, indices: Any, device: torch.device) -> tuple[int, int]:
        """(hits, counted samples) over ``dataset[i]`` for ``i`` in ``indices`` (samples with
        ``image`` and ``mask``; an empty or full mask is not counted), with ``model``'s weights."""
        from breastai.models.saliency import peak_in_mask

        self.net.load_state_dict(model.state_dict())
        self.net.to(device)
        hits = n = 0
        for i in indices:
            sample = dataset[int(i)]
            inside = torch.as_tensor(sample["mask"])[0] > 0.5
            if not bool(inside.any()) or bool(inside.all()):
                continue
            _, smap = self.explain(torch.as_tensor(sample["image"])[None].float().to(device))
            n += 1
            hits += peak_in_mask(smap[0].cpu().numpy(), inside.numpy())
        return hits, n
