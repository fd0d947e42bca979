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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .calibration import calibrated_probability
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .data.io import IMAGE_SUFFIXES, ImageReadError, LesionBox, image_stem, image_suffix, load_image, visible_files
from .engine import mirror_average
from .saliency import METHODS, SaliencyExplainer, check_upsampling, map_to_original, normalise_map

__all__ = ["Predictor", "PredictItem", "expand_inputs", "tta_views", "RECORD_FIELDS"]

log = logging.getLogger("breastai")

RECORD_FIELDS = ["id", "source", "probability", "label", "uncertainty", "logit", "has_mask",
                 "saliency_png", "saliency_npy", "error"]
_MASK_NAME = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)


@dataclass
class PredictItem:
    """One input: a path or an array, its optional mask (paths or array) and its display id."""

    image: Any
    mask: Any = None
    case_id: str | None = None
    source: str = "<array>"
    notes: list[str] = field(default_factory=list)
    mask_given: bool = False  # passed by the caller (``masks=``/``--mask``), not found beside the image or in a datalist

    @property
    def has_mask_input(self) -> bool:
        """A mask (path list, array or box) comes with this input; arrays have no truth value."""
        return self.mask is not None and not (isinstance(self.mask, (list, tuple)) and len(self.mask) == 0)


def _is_image_file(p: Path) -> bool:
    if image_suffix(p) in IMAGE_SUFFIXES:
        return True
    from .data.dicom import is_dicom  # DICOM files often carry no suffix

    return is_dicom(p)


def _sibling_masks(p: Path) -> list[str]:
    """BUSI-style masks next to an image: ``<stem>_mask.png``, ``<stem>_mask_1.png``, ... (any image
    suffix, in any case: a JPEG's mask is usually a PNG)."""
    import glob

    out = []
    base = image_stem(p)
    for m in sorted(p.parent.glob(glob.escape(base) + "_mask*")):
        stem = image_stem(m)
        hit = _MASK_NAME.search(stem)
        if hit and stem[: hit.start()] == base and image_suffix(m) in IMAGE_SUFFIXES:
            out.append(str(m))
    return out


RUN_MARKER = ".breastai-run"  # in a folder of maps written by one predict run


def _predict_output_folders(root: Path) -> set[Path]:
    """Folders under ``root`` that hold predict output (maps of a run, marked by ``.breastai-run``)."""
    return {m.parent for m in root.rglob(RUN_MARKER)}


def expand_inputs(
    inputs: Any, masks: Sequence[Any] | None = None, find_masks: bool = False
) -> tuple[list[PredictItem], list[str]]:
    """Turn files, folders (recursive), datalists (CSV/JSON) and arrays into :class:`PredictItem`.

    Args:
        inputs: one input or a list; a path, a folder, a datalist or a numpy array.
        masks: one mask (path, list of paths, array or :class:`~breastai.data.io.LesionBox`)
            per resulting image, in order.
        find_masks: pair images found in folders or given as files with BUSI-style sibling
            ``<stem>_mask*.png`` files.

    Returns:
        The items and notes on skipped folder entries (non-image files, mask files).

    Raises:
        ValueError: the number of masks does not match the number of images.
    """
    from .data.datalist import read_datalist

    if isinstance(inputs, (str, Path, np.ndarray, torch.Tensor)) or not isinstance(inputs, Iterable):
        inputs = [inputs]
    items: list[PredictItem] = []
    notes: list[str] = []
    for k, inp in enumerate(inputs):
        if isinstance(inp, (np.ndarray, torch.Tensor)):
            items.append(PredictItem(np.asarray(inp), case_id=f"array{k}", source="<array>"))
            continue
        p = Path(inp)
        if p.is_dir():
            outputs = _predict_output_folders(p)
            for f in visible_files(p):
                if outputs & set(f.parents):  # an earlier predict run's overlays, not inputs
                    continue
                if _MASK_NAME.search(image_stem(f)):
                    notes.append(f"{f}: skipped (a mask file)")
                elif not _is_image_file(f):
                    notes.append(f"{f}: skipped (not an image file)")
                else:
                    items.append(PredictItem(str(f), _sibling_masks(f) or None if find_masks else None, source=str(f)))
        elif p.suffix.lower() in (".csv", ".json") and p.is_file():
            for r in read_datalist(p, check_files=False, require_label=False):
                items.append(PredictItem(r["image"], r["mask"] or None, case_id=r["case_id"], source=str(r["image"])))
        else:  # a file (missing or unsupported ones become error records)
            items.append(PredictItem(str(p), (_sibling_masks(p) or None) if find_masks and p.is_file() else None, source=str(p)))
    if masks is not None:
        # One mask for one image may come bare (a path, an array, a box), like the image itself.
        masks = [masks] if isinstance(masks, (str, Path, np.ndarray, torch.Tensor, LesionBox)) else list(masks)
        if len(masks) != len(items):
            raise ValueError(f"{len(masks)} mask(s) given for {len(items)} image(s); give one mask per image, in order")
        for it, m in zip(items, masks):
            if isinstance(m, torch.Tensor):
                m = m.detach().cpu().numpy()
            if isinstance(m, tuple):  # several mask files of one image, like a list
                m = list(m)
            it.mask = m if isinstance(m, (np.ndarray, list, LesionBox)) or m is None else [str(m)]
            it.mask_given = it.has_mask_input
    return items, notes


def tta_views(x: torch.Tensor, n: int, aug: dict[str, Any], seed: int = 0) -> torch.Tensor:
    """``n`` augmented copies of one input (1, C, S, S): flips and a small affine.

    Flips follow the training augmentation (a horizontal flip only if training used it, the
    same for vertical); rotation, scale and translation are capped at 10 degrees, 10 % and
    5 %. Seeded, so the uncertainty of an image is reproducible.
    """
    g = torch.Generator().manual_seed(seed)
    u = lambda: torch.rand(n, generator=g) * 2 - 1  # noqa: E731
    rot = np.deg2rad(min(float(aug.get("rotate_deg", 10.0)), 10.0)) * u()
    scale = 1 + min(float(aug.get("scale", 0.1)), 0.1) * u()
    tx, ty = (min(float(aug.get("translate", 0.05)), 0.05) * 2 * u() for _ in range(2))
    fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if aug.get("hflip", 0.5) > 0 else torch.ones(n)
    fy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if aug.get("vflip", 0.0) > 0 else torch.ones(n)
    cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
    theta = torch.stack([torch.stack([cos * fx, -sin * fy, tx], 1), torch.stack([sin * fx, cos * fy, ty], 1)], 1)
    xs = x.expand(n, *x.shape[1:])
    grid = F.affine_grid(theta.to(x), list(xs.shape), align_corners=False)
    out = F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if out.shape[1] > 1:  # the mask channel stays binary
        out[:, 1:] = (out[:, 1:] > 0.5).to(out.dtype)
    return out


def _safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).stem if "." in text else text).strip("_")[:80] or "image"


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
        from .training import resolve_device

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
        from .models import MODELS

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
        from .data.transforms import build_transforms

        self._steps = list(build_transforms({**cfg, "preprocess": self.pre}, train=False).transforms)
        self._explainers: dict[str, SaliencyExplainer] = {}
        self.saliency_upsample = "bicubic"  # how Grad-CAM maps are drawn (SaliencyExplainer's ``upsample``)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> "Predictor":
        """Load ``best.pt`` (safely, ``weights_only=True``) and build the predictor."""
        state = load_checkpoint(path, map_location="cpu")
        if "ensemble" in state:
            from .ensemble_predict import EnsemblePredictor

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
        from .data.dicom import holds_identifier, is_dicom, private_identity, redact

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
                from .radiomics.dataset_features import radiomics_of_array

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
                mask_full = _reader_to_original(full_mask, meta) > 0.5 if rec["has_mask"] else None
                arrays = (m, _reader_to_original(full, meta), mask_full)
            return rec, arrays
        except Exception as exc:  # one bad input must not stop the run; the record says why
            msg = str(exc) if isinstance(exc, (ImageReadError, CheckpointError)) else f"{type(exc).__name__}: {exc}"
            if item.source not in msg and item.source != "<array>":
                msg = f"{item.source}: {msg}"
            if secrets:
                from .data.dicom import redact

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


def _reader_to_original(arr: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """An array on the reader's output grid back on the original grid (undo DICOM crop/flip)."""
    arr = np.asarray(arr, dtype=np.float32)
    if not (meta.get("flipped_lr") or meta.get("crop_box") is not None):
        return arr
    from .data.mammo import undo_geometry

    return undo_geometry(arr, {"rows": arr.shape[0], "cols": arr.shape[1], **meta})
