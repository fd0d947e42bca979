"""Scorers: one decoded input in, a calibrated score and its saliency map out.

A :class:`ModelScorer` is one checkpoint's model with everything it needs from the checkpoint:
its preprocessing preset, reader options, calibration and saliency explainers. It runs the
preprocess -> score -> explain stages of a predict input; decoding the file, finding the mask
and writing the results belong to :class:`breastai.inference.predictor.Predictor`, so that an
ensemble (:class:`breastai.inference.ensemble.EnsembleScorer`) can share one decode between its
members.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from breastai.data.geometry import map_to_original, reader_to_original
from breastai.data.readers.registry import ImageReadError
from breastai.data.transforms import FULL_IMAGE, FULL_MASK, KeepFullImaged, build_transforms
from breastai.inference.inputs import has_mask_input
from breastai.models.calibration import calibrated_logit
from breastai.models.checkpoint import Checkpoint, CheckpointError, inference_model, reads_mask, weights_digest
from breastai.models.digest import content_digest
from breastai.models.ood import FeatureTap, model_features
from breastai.models.outliner import require_task
from breastai.models.saliency import SaliencyExplainer, check_upsampling, normalise_map
from breastai.models.tta import mirror_average, tta_views

__all__ = ["Scored", "ModelInput", "ModelScorer", "KeepFullImaged"]


class ModelInput(NamedTuple):
    """One input after a model's preset: the preset's dict (network input, full-resolution image and
    mask where kept, crop box) and the reader's ``meta``."""

    data: dict[str, Any]
    meta: dict[str, Any]


@dataclass
class Scored:
    """What a scorer makes of one input.

    Attributes:
        logit: the record's ``logit``: the raw model log-odds (one model) or the combined,
            already calibrated log-odds (ensemble).
        calibrated_logit: calibrated log-odds; the probability is ``sigmoid`` of it.
        has_mask: the model was given a non-empty lesion mask.
        tta_calibrated: calibrated log-odds of the test-time augmentation views, or None.
        saliency: the normalised map in the stored image geometry, or None.
        image: the normalised grey image in the stored geometry (for overlays), or None.
        lesion_mask: the lesion mask the model saw, in the stored geometry, or None.
        ood_score: the out-of-distribution score (above 1: unlike the training images; see
            :mod:`breastai.models.ood`), or None when the checkpoint has no detector.
    """

    logit: float
    calibrated_logit: float
    has_mask: bool
    tta_calibrated: np.ndarray | None = None
    saliency: np.ndarray | None = None
    image: np.ndarray | None = None
    lesion_mask: np.ndarray | None = None
    ood_score: float | None = None


class _WithRadiomics(torch.nn.Module):
    """A radiomics-taking model bound to the current lesion's feature vector, so that saliency,
    TTA and plain scoring call it with the image alone."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.radiomics: torch.Tensor | None = None
        layer = getattr(net, "target_layer_name", "")
        self.target_layer_name = f"net.{layer}" if layer else ""

    def _bound(self, x: torch.Tensor) -> torch.Tensor:
        if self.radiomics is None:
            raise ValueError("no radiomics vector bound for this lesion")
        return self.radiomics.expand(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, radiomics=self._bound(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x, radiomics=self._bound(x))


class ModelScorer:
    """One checkpoint's model, preset, calibration and explainers.

    Args:
        ckpt: a (non-ensemble) checkpoint (see :func:`breastai.models.checkpoint_io.load_checkpoint`).
        device: a torch device.
        source: where the checkpoint came from (for messages).

    Raises:
        CheckpointError: the checkpoint lacks what inference needs.
    """

    def __init__(self, ckpt: Checkpoint, device: torch.device, source: str = "<state>"):
        require_task(ckpt, "classification", source)
        try:
            cfg = ckpt.config
            self.pre = dict(cfg["preprocess"])
            for key in ("mode", "size", "normalize", "percentiles", "margin", "min_crop", "mask_channel"):
                self.pre[key]
            self.reader_options = cfg["data"].get("reader_options") or {}
            self.flip_average = bool(cfg["eval"]["flip_average"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: checkpoint lacks the preprocessing description ({exc}); "
                                  "it was not written by breastai train") from exc
        if len(ckpt.classes) != 2:
            raise CheckpointError(f"{source}: expected 2 classes, checkpoint has {list(ckpt.classes)}")
        self.cfg, self.source, self.device = cfg, source, device
        self.temperature = float(ckpt.temperature)
        self.calibration = ckpt.calibration
        self.modalities = list(ckpt.modalities) if ckpt.modalities else None  # None: refuses no modality
        self.ood = ckpt.ood
        self.aug = dict(cfg.get("augment") or {})
        self._reads_mask = reads_mask(ckpt)
        # Saliency and the detector read these layers by name: folding keeps their outputs.
        model = inference_model(ckpt, device, keep=[ckpt.model.saliency_layer, *(self.ood.layers if self.ood else ())])
        self.weights_digest = weights_digest(ckpt)  # the checkpoint's weights, not the folded copy's
        spec = ckpt.model.spec
        self.needs_radiomics = spec.requires_radiomics
        self.uses_image = spec.uses_image
        self.radiomics_names = ckpt.model.init_kwargs.get("feature_names")
        self.model = (_WithRadiomics(model) if self.needs_radiomics else model).eval()
        self.steps = list(build_transforms({**cfg, "preprocess": self.pre}, train=False,
                                           full_image=[KeepFullImaged()]).transforms)
        self._explainers: dict[str, SaliencyExplainer] = {}
        self.saliency_upsample = "bicubic"  # how Grad-CAM maps are drawn (SaliencyExplainer's ``upsample``)

    @property
    def crop_mode(self) -> bool:
        """True when the model sees a lesion-centred crop and so needs a mask per image."""
        return self.pre["mode"] == "crop"

    @property
    def reads_mask(self) -> bool:
        """Whether the lesion mask changes the score (crop, outline channel or radiomics); a whole-image
        model without an outline channel scores the image whatever the mask."""
        return self._reads_mask

    @property
    def needs_mask(self) -> bool:
        """Whether an input without a non-empty lesion mask cannot be scored."""
        return self.crop_mode or self.needs_radiomics

    def set_saliency_upsample(self, mode: str) -> None:
        """Draw Grad-CAM maps with ``bicubic`` (default) or ``bilinear`` interpolation of the coarse map."""
        check_upsampling(mode)
        if mode != self.saliency_upsample:
            self.saliency_upsample, self._explainers = mode, {}

    def explainer(self, method: str) -> SaliencyExplainer:
        """The (cached) saliency explainer for ``method``."""
        if method not in self._explainers:
            self._explainers[method] = SaliencyExplainer(self.model, method, upsample=self.saliency_upsample)
        return self._explainers[method]

    def fingerprint(self) -> dict[str, Any]:
        """What decides this model's scores: weights, calibration, configuration (preset, reader options,
        flip averaging) and out-of-distribution detector, as plain values and digests."""
        return {"weights": self.weights_digest, "calibration": dict(self.calibration),
                "config": content_digest(self.cfg), "ood": None if self.ood is None else content_digest(self.ood.to_state())}

    def prepare(self, decode: Callable[[dict[str, Any]], tuple[np.ndarray, dict[str, Any]]], mask: Any, source: str,
                case_id: str, mask_given: bool, keep_image: bool = True) -> ModelInput:
        """:meth:`preprocess` of ``decode(self.reader_options)``, the input as this model's reader reads it."""
        image, meta = decode(self.reader_options)
        return self.preprocess(image, meta, mask, source, case_id, mask_given, keep_image)

    def score_decoded(self, decode: Callable[[dict[str, Any]], tuple[np.ndarray, dict[str, Any]]], mask: Any,
                      source: str, case_id: str, saliency: str, tta: int, mask_given: bool,
                      ready: Callable[[ModelScorer], ModelInput] | None = None) -> Scored:
        """:meth:`score` on ``decode(self.reader_options)``, the input as this model's reader reads it, or on
        ``ready(self)``, its input preprocessed ahead (by the load stage, :mod:`breastai.inference.loading`)."""
        inp = ready(self) if ready is not None else self.prepare(decode, mask, source, case_id, mask_given)
        return self.score_input(inp, source, saliency, tta)

    def score(self, image: np.ndarray, meta: dict[str, Any], mask: Any, source: str, case_id: str,
              saliency: str, tta: int, mask_given: bool) -> Scored:
        """Preprocess, score and explain one decoded image (:meth:`preprocess`, then :meth:`score_input`).

        Args:
            image: the decoded image (the reader's grid) and ``meta`` its reader's metadata.
            meta: see ``image``.
            mask: paths, an array, a :class:`~breastai.data.readers.masks.LesionBox` or None.
            source: the input's name for messages.
            case_id: the record's id.
            saliency: a :data:`~breastai.models.saliency.METHODS` name.
            tta: number of test-time augmentation views (0: none).
            mask_given: the caller gave the mask (an empty one is then an error for any model).

        Raises:
            ImageReadError: the input cannot be scored by this model (the message says why).
        """
        return self.score_input(self.preprocess(image, meta, mask, source, case_id, mask_given), source, saliency, tta)

    def preprocess(self, image: np.ndarray, meta: dict[str, Any], mask: Any, source: str, case_id: str,
                   mask_given: bool, keep_image: bool = True) -> ModelInput:
        """This model's preset on one decoded image (arguments as for :meth:`score`); no network runs.

        ``keep_image=False`` drops the full-resolution image when nothing will read it (no map, no
        radiomics), so a load-stage worker does not send it back.

        Raises:
            ImageReadError: the input cannot be scored by this model (the message says why).
        """
        given = has_mask_input(mask)
        if self.crop_mode and not given:
            raise ImageReadError(f"{source}: this checkpoint classifies lesion crops (preprocess.mode=crop): "
                                 "a lesion mask is needed for this image (--mask, or a datalist with masks)")
        d: dict[str, Any] = {"image": image, "reader_meta": meta, "mask": mask, "case_id": case_id, "source": source}
        for step in self.steps:  # step by step: MONAI's Compose would wrap the specific errors
            d = step(d)
        has_mask = bool(d.get("has_mask", False))
        # A whole-image model needs no mask: an empty one found beside the image or in a datalist
        # (BUSI's normal images) only means no outline is drawn; one the caller gave is a mistake.
        if given and not has_mask and (self.needs_mask or mask_given):
            raise ImageReadError(f"{source}: the lesion mask is empty")
        if not has_mask:  # nothing reads an empty full-size mask
            d.pop(FULL_MASK, None)
        if not (keep_image or self.needs_radiomics):
            d.pop(FULL_IMAGE, None)
        return ModelInput(d, meta)

    def score_input(self, inp: ModelInput, source: str, saliency: str, tta: int) -> Scored:
        """Score and explain one preprocessed input (:meth:`preprocess`); see :meth:`score`."""
        d, meta = inp
        has_mask = bool(d.get("has_mask", False))
        x = d["image"][None].to(self.device).contiguous(memory_format=torch.channels_last)
        full, full_mask = d.get(FULL_IMAGE), d.get(FULL_MASK)
        if self.needs_radiomics:
            if not has_mask:
                raise ImageReadError(f"{source}: model {self.cfg['model']['name']} uses lesion radiomics: "
                                     "a lesion mask is needed (--mask, or a datalist with masks)")
            from breastai.radiomics.dataset import radiomics_of_array  # the IBSI engine loads only for these models

            r = radiomics_of_array(self.cfg, np.asarray(full), np.asarray(full_mask) > 0.5, self.radiomics_names)
            self.model.radiomics = torch.as_tensor(r)[None].to(self.device)
        # A radiomics-only model has no image feature map to explain.
        prefix = "net." if self.needs_radiomics else ""
        # The detector's features come from the scoring pass itself (one pass, not two).
        tap = FeatureTap(self.model, self.ood.layers, prefix) if self.ood is not None else nullcontext()
        with tap:
            logit, smap = self.explainer(saliency if self.uses_image else "none")(x)
        z = float(logit[0])
        if self.flip_average and self.uses_image:  # scored as in training and evaluate; the map is the image's own
            with torch.no_grad():
                z = float(mirror_average(logit[:1].detach().float(), self.model, x)[0])
        out = Scored(logit=z, calibrated_logit=float(calibrated_logit(np.array([z]), self.calibration)[0]),
                     has_mask=has_mask)
        if self.ood is not None:
            groups = tap.groups() or model_features(self.model, self.ood.layers, x, prefix=prefix)
            out.ood_score = float(self.ood.score(groups)[0])
        if tta > 0:
            with torch.no_grad():
                views = tta_views(x, tta, self.aug, seed=int(self.cfg.get("seed", 0)))
                zs = torch.cat([self.model(v) for v in views.split(32)]).cpu().numpy()
            out.tta_calibrated = calibrated_logit(zs, self.calibration)
        # The image and mask are on the reader's grid: only its crop/flip is undone.
        if has_mask:  # the outline the model saw (the lesion's size is measured on it), maps or not
            out.lesion_mask = reader_to_original(full_mask, meta) > 0.5
        if smap is not None:
            shape = tuple(int(s) for s in d["orig_shape"])
            out.saliency = normalise_map(map_to_original(smap[0].cpu().numpy(), d["box"], shape, meta))
            out.image = reader_to_original(full, meta)
        return out
