"""Inference on new images: calibrated malignancy probability, TTA uncertainty, saliency maps.

Everything comes from the checkpoint: model, preprocessing preset, reader options, classes,
calibration temperature and operating threshold. One record per input image::

    id, source, probability (calibrated), label (at the checkpoint's threshold), uncertainty
    (SD of the probability over N test-time augmentations; empty when N = 0), logit,
    has_mask, saliency_png, saliency_npy, error

``id`` is the file name (or the datalist's ``case_id``); for DICOM it is the hash of the SOP
Instance UID, never a patient name or ID, unless ``keep_identifiers`` is asked for.

Example (notebook)::

    p = Predictor.from_checkpoint("checkpoints/busi/best.pt")
    rec = p.predict(image_array, saliency="gradcam++", return_maps=True)[0]
    rec["probability"], rec["saliency_map"]          # map in the original image geometry
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from breastai.data.geometry import map_to_original, reader_to_original
from breastai.data.readers.registry import ImageReadError, load_image
from breastai.inference.inputs import PredictItem, expand_inputs
from breastai.models.calibration import calibrated_probability
from breastai.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
)
from breastai.models.saliency import (
    METHODS,
    SaliencyExplainer,
    check_upsampling,
    normalise_map,
)
from breastai.models.tta import mirror_average, tta_views

__all__ = ["Predictor", "RECORD_FIELDS"]

log = logging.getLogger("breastai")

RECORD_FIELDS = ["id", "source", "probability", "label", "uncertainty", "logit", "has_mask",
                 "saliency_png", "saliency_npy", "error"]


















class Predictor:
    """A loaded checkpoint ready to score images.

    Args:
        state: a checkpoint dict (see :func:`breastai.checkpoint.load_checkpoint`).
        device: ``auto``, ``cpu`` or ``cuda``.
        source: where the checkpoint came from (for messages and the run record).

    Raises:
        CheckpointError: the checkpoint lacks what inference needs.
    """

    def __init__(self, state: dict[str, Any], device: str = "auto", source: str = "<state>"):
        from breastai.core.distributed import resolve_device

        try:
            cfg = state["config"]
            self.pre = dict(cfg["preprocess"])
            for key in ("mode", "size", "normalize", "percentiles", "margin", "min_crop", "mask_channel"):
                self.pre[key]
            self.classes = list(state.get("classes") or cfg["data"]["classes"])
            self.reader_options = cfg["data"].get("reader_options") or {}
            self.flip_average = bool(cfg["eval"]["flip_average"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: checkpoint lacks the preprocessing description ({exc}); "
                                  "it was not written by breastai train") from exc
        if len(self.classes) != 2:
            raise CheckpointError(f"{source}: expected 2 classes, checkpoint has {self.classes}")
        self.cfg, self.source = cfg, source
        self.temperature = float(state.get("temperature", 1.0))
        self.calibration = {"temperature": self.temperature, "logit_offset": float(state.get("logit_offset", 0.0))}
        self.threshold = float(state.get("threshold", 0.5))
        self.aug = dict(cfg.get("augment") or {})
        self.device = resolve_device(device)
        model = model_from_checkpoint(state)
        from breastai.models.registry import MODELS

        spec = MODELS.get(state["model"]["name"])
        self.needs_radiomics = bool(getattr(spec, "requires_radiomics", False))
        self.uses_image = bool(getattr(spec, "uses_image", True))
        self.radiomics_names = state["model"].get("feature_names")
        if self.needs_radiomics:
            model = _WithRadiomics(model)
        self.model = model.to(self.device).eval()
        # channels-last convolutions are about 1.5x faster on CPU (and on tensor cores).
        self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():  # saliency needs activation gradients only
            p.requires_grad_(False)
        from breastai.data.transforms import build_transforms

        self._steps = list(build_transforms({**cfg, "preprocess": self.pre}, train=False).transforms)
        self._explainers: dict[str, SaliencyExplainer] = {}
        self.saliency_upsample = "bicubic"  # how Grad-CAM maps are drawn (SaliencyExplainer's ``upsample``)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> "Predictor":
        """Load ``best.pt`` (safely, ``weights_only=True``) and build the predictor."""
        state = load_checkpoint(path, map_location="cpu")
        if "ensemble" in state:
            from breastai.inference.ensemble import EnsemblePredictor

            return EnsemblePredictor(state, device=device, source=str(path))
        return cls(state, device=device, source=str(path))

    @property
    def crop_mode(self) -> bool:
        """True when the model sees a lesion-centred crop and so needs a mask per image."""
        return self.pre["mode"] == "crop"

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

    def predict(
        self,
        inputs: Any,
        masks: Sequence[Any] | None = None,
        saliency: str = "none",
        tta: int = 0,
        keep_identifiers: bool = False,
        return_maps: bool = False,
        find_masks: bool = False,
        map_writer: Any = None,
    ) -> list[dict[str, Any]]:
        """Score images; one record per image (see the module docstring for the fields).

        Args:
            inputs: paths, folders, datalists or numpy arrays (2D grey or HxWx3), or a list.
            masks: one mask per image (path, list of paths, array,
                :class:`~breastai.data.io.LesionBox` or None), in order.
            saliency: ``gradcam``, ``gradcam++``, ``occlusion`` or ``none``.
            tta: number of test-time augmentations for ``uncertainty`` (0 disables).
            keep_identifiers: DICOM ``id`` = file name (plus ``patient_id``) instead of the UID hash.
            return_maps: add ``saliency_map``, ``image`` (for overlays) and ``lesion_mask`` (the
                mask or box the model was given, None without one), all in the original geometry.
            find_masks: use BUSI-style sibling ``<stem>_mask*.png`` files as masks.
            map_writer: callable ``(index, record, map, image, mask) -> (png, npy)`` that stores
                the maps (used by :func:`breastai.predict_cli.run_predict`).

        Returns:
            Records; a failed input has ``error`` set and the score fields empty.
        """
        if saliency not in METHODS:
            raise ValueError(f"unknown saliency method {saliency!r}; choose one of {', '.join(METHODS)}")
        items, notes = expand_inputs(inputs, masks, find_masks)
        for n in notes:
            log.info("%s", n)
        records = []
        for i, item in enumerate(items):
            rec, arrays = self._predict_item(item, saliency, tta, keep_identifiers, i)
            if arrays is not None and map_writer is not None:
                try:
                    rec["saliency_png"], rec["saliency_npy"] = map_writer(i, rec, *arrays)
                except OSError as exc:
                    rec["error"] = f"{item.source}: cannot write saliency files ({exc})"
            if return_maps and arrays is not None:
                rec["saliency_map"], rec["image"], rec["lesion_mask"] = arrays
            records.append({k: v for k, v in rec.items() if not k.startswith("_")})
        return records

    @staticmethod
    def _identity(item: PredictItem, keep: bool, index: int) -> tuple[dict[str, Any], list[str]]:
        """``id`` and ``source`` of an input and the header values to redact from its messages.

        Decided before the pixels are read, so that a DICOM file that then fails to load is named
        as safely as one that loads: its id is the hash of its SOP Instance UID, and its path and
        errors lose every identifying header value (folder and file names exported from PACS
        often carry the patient's name, ID or the UIDs).
        """
        default = item.case_id or (Path(item.source).name if item.source != "<array>" else f"array{index}")
        if keep or isinstance(item.image, np.ndarray):
            return {"id": default}, []
        from breastai.data.readers.dicom import is_dicom, private_identity
        from breastai.data.readers.redaction import holds_identifier, redact

        if not is_dicom(item.image):
            return {"id": default}, []
        secrets, sop_hash = private_identity(item.image)
        rid = item.case_id
        # A case_id made from the file name (a folder input, or `prepare folder`) may hold an identifier.
        if rid is None or rid == Path(item.source).stem or holds_identifier(rid, secrets):
            rid = sop_hash or f"dicom-{index:05d}"
        return {"id": rid, "source": redact(item.source, secrets)}, secrets

    @staticmethod
    def _identifiers(item: PredictItem) -> dict[str, str]:
        """``patient_id`` and ``sop_instance_uid`` columns (``--keep-identifiers``)."""
        import pydicom

        ds = pydicom.dcmread(item.image, stop_before_pixels=True, force=True)
        return {"patient_id": str(ds.get("PatientID", "")), "sop_instance_uid": str(ds.get("SOPInstanceUID", ""))}

    def _load(self, item: PredictItem) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(item.image, np.ndarray):
            return item.image, {"reader": "array"}
        return load_image(item.image, self.reader_options)

    def _predict_item(self, item: PredictItem, saliency: str, tta: int, keep: bool, index: int):
        rec: dict[str, Any] = {k: None for k in RECORD_FIELDS}
        rec.update(source=item.source, has_mask=False)
        ident, secrets = self._identity(item, keep, index)
        rec.update(ident)
        try:
            img, meta = self._load(item)
            if keep and meta.get("format") == "dicom":
                rec.update(self._identifiers(item))
            arr = np.asarray(img, dtype=np.float32)
            finite = arr[np.isfinite(arr)]
            if finite.size == 0 or float(finite.max()) == float(finite.min()):
                raise ImageReadError(f"{item.source}: image is blank (every pixel has the same value)")
            if self.crop_mode and not item.has_mask_input:
                raise ImageReadError(f"{item.source}: this checkpoint classifies lesion crops (preprocess.mode=crop): "
                                     "a lesion mask is needed for this image (--mask, or a datalist with masks)")
            d: dict[str, Any] = {"image": img, "reader_meta": meta, "mask": item.mask, "case_id": rec["id"],
                                 "source": item.source}
            full = full_mask = None
            for step in self._steps:  # step by step: MONAI's Compose would wrap the specific errors
                d = step(d)
                if full is None and step.__class__.__name__ == "NormalizeIntensityRobustd":
                    full, full_mask = d["image"][0], d["mask"][0]
            rec["has_mask"] = bool(d.get("has_mask", False))
            # A whole-image model needs no mask: an empty one found beside the image or in a datalist
            # (BUSI's normal images) only means no outline is drawn; one the caller gave is a mistake.
            needs_mask = self.crop_mode or self.needs_radiomics or item.mask_given
            if item.has_mask_input and not rec["has_mask"] and needs_mask:
                raise ImageReadError(f"{item.source}: the lesion mask is empty")
            x = d["image"][None].to(self.device).contiguous(memory_format=torch.channels_last)
            if self.needs_radiomics:
                if not rec["has_mask"]:
                    raise ImageReadError(f"{item.source}: model {self.cfg['model']['name']} uses lesion radiomics: "
                                         "a lesion mask is needed (--mask, or a datalist with masks)")
                from breastai.radiomics.dataset import radiomics_of_array

                r = radiomics_of_array(self.cfg, np.asarray(full), np.asarray(full_mask) > 0.5, self.radiomics_names)
                self.model.radiomics = torch.as_tensor(r)[None].to(self.device)
            # A radiomics-only model has no image feature map to explain.
            logit, smap = self.explainer(saliency if self.uses_image else "none")(x)
            z = float(logit[0])
            if self.flip_average and self.uses_image:  # scored as in training and evaluate; the map is the image's own
                with torch.no_grad():
                    z = float(mirror_average(logit[:1].detach().float(), self.model, x)[0])
            p = float(calibrated_probability(np.array([z]), self.calibration)[0])
            rec.update(logit=z, probability=p, label=self.classes[int(p >= self.threshold)])
            if tta > 0:
                with torch.no_grad():
                    views = tta_views(x, tta, self.aug, seed=int(self.cfg.get("seed", 0)))
                    zs = torch.cat([self.model(v) for v in views.split(32)]).cpu().numpy()
                rec["uncertainty"] = float(np.std(calibrated_probability(zs, self.calibration)))
                rec["_tta_logits"] = zs  # for ensembles, which combine the views member by member
            arrays = None
            if smap is not None:
                shape = tuple(int(s) for s in d["orig_shape"])
                m = normalise_map(map_to_original(smap[0].cpu().numpy(), d["box"], shape, meta))
                # The image and mask are on the reader's grid: only its crop/flip is undone.
                mask_full = reader_to_original(full_mask, meta) > 0.5 if rec["has_mask"] else None
                arrays = (m, reader_to_original(full, meta), mask_full)
            return rec, arrays
        except Exception as exc:  # one bad input must not stop the run; the record says why
            msg = str(exc) if isinstance(exc, (ImageReadError, CheckpointError)) else f"{type(exc).__name__}: {exc}"
            if item.source not in msg and item.source != "<array>":
                msg = f"{item.source}: {msg}"
            if secrets:
                from breastai.data.readers.redaction import redact

                msg = redact(msg, secrets)
            rec.update(error=msg, probability=None, label=None, logit=None, uncertainty=None)
            return rec, None


class _WithRadiomics(torch.nn.Module):
    """A radiomics-taking model bound to the current lesion's feature vector, so that saliency,
    TTA and plain scoring call it with the image alone."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.radiomics: torch.Tensor | None = None
        layer = getattr(net, "target_layer_name", "")
        self.target_layer_name = f"net.{layer}" if layer else ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.radiomics is None:
            raise ValueError("no radiomics vector bound for this lesion")
        return self.net(x, radiomics=self.radiomics.expand(x.shape[0], -1))


