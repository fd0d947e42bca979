"""Saliency maps for the one-logit classifiers, and the way back to the original image.

Methods: Grad-CAM and Grad-CAM++ (``monai.visualize``) on the model's registered target layer
(``model.target_layer_name``, the last spatial feature map), and occlusion sensitivity
(``monai.visualize.OcclusionSensitivity``) as the slow, model-agnostic option. Every map explains
the MALIGNANCY logit, whatever the predicted class: it shows what pushed the score up.

The coarse Grad-CAM map is drawn on the S x S network input by bicubic interpolation (its peak
can fall between feature-map cells; ``upsample="bilinear"`` peaks at a cell centre). Maps are
computed on the S x S network input and sent back to the original pixel grid by
:func:`map_to_original` (undo the resize, the square box and any reader crop/flip), then
normalised by their maximum (so 0 stays 0 and ratios of saliency mass are preserved).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from breastai.models.lesions import mask_edge

__all__ = ["METHODS", "UPSAMPLING", "check_upsampling", "LogitAsClasses", "SaliencyExplainer", "normalise_map", "peak_in_mask", "heat_overlay", "frozen_copy", "saliency_grid"]

METHODS = ("gradcam", "gradcam++", "occlusion", "none")
UPSAMPLING = ("bicubic", "bilinear")


class LogitAsClasses(nn.Module):
    """(B,) malignancy logit -> (B, 1) so MONAI's class-index handling applies (class 0 = the logit)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(-1, 1)


class SaliencyExplainer:
    """Computes maps and logits in one pass for one model.

    Args:
        model: a :class:`breastai.models.Classifier` (carries ``target_layer_name``).
        method: ``gradcam``, ``gradcam++``, ``occlusion`` or ``none``.
        occlusion_mask: occluded patch side as a fraction of the input side.
        upsample: interpolation of the coarse Grad-CAM map to the input grid, ``bicubic`` or
            ``bilinear``. A bilinear map peaks at the centre of its strongest cell; a bicubic one
            also weighs the neighbouring cells, so its peak can fall between cell centres, towards
            the stronger neighbour (measured in docs/experiments.md, "Measurements behind the code").
    """

    def __init__(self, model: nn.Module, method: str = "gradcam++", occlusion_mask: float = 0.125,
                 upsample: str = "bicubic"):
        if method not in METHODS:
            raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
        check_upsampling(upsample)
        self.model, self.method, self.occlusion_mask, self.upsample = model, method, occlusion_mask, upsample
        # In eval mode: MONAI restores the wrapper's mode after each map, and a (default) training
        # wrapper would leave BatchNorm updating its statistics on every later forward pass.
        self.wrapper = LogitAsClasses(model).eval()
        self._cam = None
        if method in ("gradcam", "gradcam++"):
            from monai.visualize import GradCAM, GradCAMpp

            layer = getattr(model, "target_layer_name", None)
            if not layer or layer not in dict(model.named_modules()):
                raise ValueError(f"model has no usable saliency target layer ({layer!r})")
            for m in model.modules():  # an in-place op after the hooked layer breaks its backward hook
                if getattr(m, "inplace", False) is True:
                    m.inplace = False
            cls = GradCAM if method == "gradcam" else GradCAMpp
            # Identity post-processing: MONAI's default normaliser inverts magnitudes (max -> 0).
            self._cam = cls(nn_module=self.wrapper, target_layers=f"net.{layer}", postprocessing=lambda m: m,
                            upsampler=_upsampler(upsample))
            # The graph starts AT the target layer: its output becomes a leaf that requires grad, so
            # the backward pass runs through the head only (the map needs nothing below the layer).
            # With trainable weights upstream the graph exists anyway and this hook does nothing.
            dict(model.named_modules())[layer].register_forward_hook(_graph_from_here)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B,) and maps (B, S, S) >= 0 on the input grid (None for ``none``)."""
        if self.wrapper.training or self.model.training:  # eval() walks every module: only when needed
            self.wrapper.eval()
        if self._cam is not None:
            # MONAI's Grad-CAM++ mixes up the batch with B > 1 (score (B,) times grad (B,C,H,W)):
            # one sample at a time there; Grad-CAM takes the whole batch.
            chunks = x.split(1) if self.method == "gradcam++" else [x]
            logits, maps = [], []
            for xc in chunks:
                with torch.enable_grad(), warnings.catch_warnings():
                    # Expected with _graph_from_here: the hook fires for the layer's output gradient.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    maps.append(self._cam(xc.detach(), class_idx=0).detach()[:, 0])
                logits.append(self._cam.nn_module.score.detach().reshape(-1))
            return torch.cat(logits), F.relu(torch.cat(maps))
        with torch.no_grad():
            logits = self.model(x).reshape(-1)
        if self.method == "none":
            return logits, None
        return logits, self._occlusion(x, logits)

    def _occlusion(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        from monai.visualize import OcclusionSensitivity

        side = x.shape[-1]
        occ = OcclusionSensitivity(self.wrapper, mask_size=max(3, int(side * self.occlusion_mask)) | 1,
                                   n_batch=32, verbose=False, mode="mean_img", overlap=0.5, activate=False)
        maps = []
        for i in range(x.shape[0]):
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # MONAI's own indexing deprecation notices
                occ_map, _ = occ(x[i : i + 1])
            # (1, n_classes=1, S, S): the logit with each region occluded. A drop below the intact
            # logit means the region supported the malignancy score.
            drop = logits[i] - occ_map.reshape(-1, *x.shape[-2:])[0]
            maps.append(F.relu(drop))
        return torch.stack(maps)


def check_upsampling(mode: str) -> None:
    """Raise ``ValueError`` naming the choices unless ``mode`` is one of :data:`UPSAMPLING`."""
    if mode not in UPSAMPLING:
        raise ValueError(f"unknown map upsampling {mode!r}; choose one of {', '.join(UPSAMPLING)}")


def _upsampler(mode: str):
    """MONAI's upsampler factory (input size -> function) for ``mode``."""

    def factory(size):
        return lambda m: F.interpolate(m, size=tuple(size), mode=mode, align_corners=False)

    return factory


def _graph_from_here(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.detach().requires_grad_(True)
    return None


def normalise_map(m: np.ndarray) -> np.ndarray:
    """Divide a non-negative map by its maximum (all-zero maps stay zero)."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    mx = float(m.max()) if m.size else 0.0
    return m / mx if mx > 0 else m


def peak_in_mask(smap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum lies inside ``mask`` (the pointing game's hit; a map that is
    zero everywhere points nowhere). ``smap`` and ``mask`` share one pixel grid."""
    smap = np.nan_to_num(np.asarray(smap, dtype=np.float64))
    return bool(smap.max() > 0 and np.asarray(mask, dtype=bool).flat[int(np.argmax(smap))])




def _outline(mask: np.ndarray) -> np.ndarray:
    return mask_edge(mask, width=max(1, int(round(max(np.shape(mask)) / 400))))  # visible on 4000-px mammograms too


def heat_overlay(image: np.ndarray, heat: np.ndarray | None, mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3): grey ``image`` in [0, 1] with a jet heat map and the lesion outline in green."""
    from matplotlib import colormaps

    grey = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if heat is None:
        out = np.repeat((grey * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    else:
        idx = (normalise_map(heat) * 255).astype(np.uint8)
        # jet without its dark-red end, so the hottest spot is a bright red; weighted by the map
        # (alpha * sqrt(h)) so cold regions keep the anatomy readable. Per-level tables: the
        # blend is grey * keep[level] + tint[level], a few operations per pixel on large images.
        level = np.arange(256, dtype=np.float32) / 255
        a = alpha * np.sqrt(level)
        tint = colormaps["jet"](0.88 * level)[:, :3].astype(np.float32) * a[:, None] * 255
        keep = (1 - a) * 255
        out = np.empty((*grey.shape, 3), dtype=np.uint8)
        base = grey * keep[idx] + 0.5
        for c in range(3):
            out[..., c] = base + tint[idx, c]
    if mask is not None and np.asarray(mask).any():
        out[_outline(mask)] = (0, 255, 0)
    return out


def frozen_copy(model: nn.Module) -> nn.Module:
    """A private eval-mode copy to explain, so the CAM hooks never touch a model in training (a DDP
    wrapper is looked through). Its weights are frozen: the backward pass then starts at the target
    layer (about 3.5x faster for EfficientNet-Lite0 on CPU), with the same maps."""
    import copy

    raw = model.module if hasattr(model, "module") else model
    clone = copy.deepcopy(raw).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def saliency_grid(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor | None = None, method: str = "gradcam++"
) -> torch.Tensor:
    """Heat-map overlays of a batch, for TensorBoard (``writer.add_images`` or ``make_grid``).

    Args:
        model: the classifier (left untouched: a copy is explained).
        images: (B, C, S, S) network inputs in [0, 1] (channel 0 is the grey image).
        masks: optional (B, 1, S, S) or (B, S, S) lesion masks, drawn as outlines.
        method: ``gradcam``, ``gradcam++`` or ``occlusion``.

    Returns:
        float tensor (B, 3, S, S) in [0, 1] on the CPU.
    """
    clone = frozen_copy(model)
    device = next(clone.parameters()).device
    _, maps = SaliencyExplainer(clone, method)(images.detach().to(device))
    out = []
    for i in range(images.shape[0]):
        grey = images[i, 0].detach().cpu().numpy()
        m = None
        if masks is not None:
            m = masks[i].detach().cpu().numpy().reshape(grey.shape) > 0.5
        out.append(heat_overlay(grey, maps[i].cpu().numpy(), m))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
