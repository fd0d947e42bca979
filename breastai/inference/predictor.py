"""Inference on new images: calibrated malignancy probability, TTA uncertainty, saliency maps.

Everything comes from the checkpoint: model, preprocessing preset, reader options, classes,
calibration temperature and operating threshold. A predict input goes through stages::

    inputs (files, folders, datalists, arrays; frames of multi-frame DICOM)
      -> identity (the id; DICOM: the SOP UID hash, decided before the pixels are read)
      -> modality (a DICOM whose header names a modality the checkpoint was not trained on is
         refused here, before any pixel is decoded or any model runs)
      -> load (one decode per distinct reader setting, shared by an ensemble's members)
      -> masks (given, from a datalist, found beside the image, or from a mask provider)
      -> segmenter (inputs still without a mask: each lesion it finds, breastai.inference.segment)
      -> scorer: preprocess -> score -> explain (breastai.inference.scorer / .ensemble)
      -> record (and the item callback a writer plugs in, breastai.inference.writers)

One record per input image, or with a segmenter one per lesion it finds (or one "no lesion
found" record)::

    id, source, probability (calibrated), label (at the checkpoint's threshold), uncertainty
    (SD of the probability over N test-time augmentations; empty when N = 0), logit,
    ood and ood_score (the input is unlike the training images: ``ood_score`` > 1, see
    :mod:`breastai.models.ood`; empty when the checkpoint has no detector), has_mask,
    mask_source, scored_on, component, lesion_probability, area_px, max_diameter_px, area_mm2,
    max_diameter_mm, spacing_source (see :mod:`breastai.inference.segment`),
    saliency_png, saliency_npy, error

``id`` is the file name (or the datalist's ``case_id``); for DICOM it is the hash of the SOP
Instance UID, never a patient name or ID, unless ``keep_identifiers`` is asked for.

Example (notebook)::

    p = Predictor.from_checkpoint("checkpoints/busi/best.pt")
    rec = p.predict(image_array, saliency="gradcam++", return_maps=True)[0]
    rec["probability"], rec["saliency_map"]          # map in the original image geometry

    auto = Predictor.from_checkpoint("checkpoints/busi/best.pt", segmenter="checkpoints/busi_seg/best.pt")
    [(r["component"], r["probability"], r["max_diameter_mm"]) for r in auto.predict("scan.dcm")]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from breastai.core.distributed import resolve_device
from breastai.data.readers.masks import LesionBox
from breastai.data.readers.registry import ImageReadError, frame_options, load_image
from breastai.inference.ensemble import EnsembleScorer, reader_key
from breastai.inference.inputs import PredictItem, expand_frames_of_items, expand_inputs
from breastai.inference.scorer import ModelScorer, Scored
from breastai.inference.segment import LESION_FIELDS, dicom_header, lesion_id, no_lesion_fields, size_fields
from breastai.models.calibration import Recalibration, apply_temperature
from breastai.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from breastai.models.lesions import Lesion
from breastai.models.outliner import Outliner, SegmenterSource, resolve_segmenter
from breastai.models.saliency import METHODS

__all__ = ["Predictor", "MaskProvider", "RECORD_FIELDS"]

log = logging.getLogger("breastai")

# Record keys a writer may read during ``on_item`` and that are removed right after: the input's
# path (unredacted), its DICOM frame, who drew its mask (``given``, ``box``, ``provider:<name>``,
# ``segmenter``), its calibrated log-odds (what breast and exam scores combine) and, for a
# segmenter's lesion, ``(image, outline)`` on the stored image (the outline writer's).
_PRIVATE = ("_path", "_frame", "_mask_origin", "_calibrated_logit", "_outline")

RECORD_FIELDS = ["id", "source", "probability", "label", "uncertainty", "logit", "ood", "ood_score", "has_mask",
                 *LESION_FIELDS, "saliency_png", "saliency_npy", "error"]


class MaskProvider(Protocol):
    """Outlines the lesion of an input that came without a mask (e.g. a segmentation model).

    Called with the item and its decoded image on the reader's grid (with the reader's ``meta``);
    returns a boolean mask of the image's shape, or None to leave the input without a mask.
    """

    def __call__(self, item: PredictItem, image: np.ndarray, meta: dict[str, Any]) -> np.ndarray | None: ...


def build_scorer(ckpt: Checkpoint, device: Any, source: str = "<state>") -> ModelScorer | EnsembleScorer:
    """The scorer of a checkpoint: its model, or an ensemble of its members' models."""
    if ckpt.is_ensemble:
        return EnsembleScorer.from_checkpoint(ckpt, device, source)
    return ModelScorer(ckpt, device, source)


class Predictor:
    """A scorer with the stages around it: inputs, identity, one decode per input, masks, records.

    Args:
        scorer: a :class:`~breastai.inference.scorer.ModelScorer` or
            :class:`~breastai.inference.ensemble.EnsembleScorer`.
        classes: the negative and positive class names.
        threshold: the operating threshold on the calibrated probability.
        source: where the checkpoint came from (for messages and the run record).
        mask_providers: tried in order for inputs that come without a mask (see :class:`MaskProvider`).
        recalibration: the checkpoint's local recalibrations (``breastai calibrate``), for the run record.
        segmenter: outlines the inputs still without a mask after the providers, one record per
            lesion (see :mod:`breastai.inference.segment`); None: no automatic outlines.
    """

    def __init__(self, scorer: ModelScorer | EnsembleScorer, classes: Sequence[str], threshold: float,
                 source: str = "<state>", mask_providers: Sequence[MaskProvider] = (),
                 recalibration: Sequence[Recalibration] | None = None, segmenter: Outliner | None = None):
        self.scorer = scorer
        self.classes = list(classes)
        self.threshold = float(threshold)
        self.source = source
        self.mask_providers = list(mask_providers)
        self.recalibration = list(recalibration or [])
        self.segmenter = segmenter

    @classmethod
    def from_state(cls, ckpt: Checkpoint | Mapping[str, Any], device: str = "auto", source: str = "<state>",
                   mask_providers: Sequence[MaskProvider] = (),
                   segmenter: SegmenterSource | None = None) -> "Predictor":
        """Build the predictor of a loaded checkpoint (model or ensemble); an on-disk dict is read first.

        ``segmenter`` (a path, a loaded segmentation checkpoint or an
        :class:`~breastai.models.outliner.Outliner`) outlines inputs that come without a mask; see
        :func:`breastai.models.outliner.resolve_segmenter` for how it is chosen.

        Raises:
            CheckpointError: the checkpoint lacks what inference needs, is a segmenter, or
                ``segmenter`` is a classifier.
        """
        if not isinstance(ckpt, Checkpoint):
            ckpt = Checkpoint.from_state(ckpt)
        dev = resolve_device(device)
        scorer = build_scorer(ckpt, dev, source)
        return cls(scorer, ckpt.classes, ckpt.threshold, source, mask_providers, ckpt.recalibration,
                   resolve_segmenter(segmenter, ckpt, dev))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", mask_providers: Sequence[MaskProvider] = (),
                        segmenter: SegmenterSource | None = None) -> "Predictor":
        """Load ``best.pt`` (safely, ``weights_only=True``) and build the predictor (with ``segmenter``: see
        :meth:`from_state`)."""
        return cls.from_state(load_checkpoint(path, map_location="cpu"), device, str(path), mask_providers, segmenter)

    # What the checkpoint says, for run records and callers.
    @property
    def members(self) -> list[ModelScorer]:
        """The scorers of the models behind the scores (one, or an ensemble's members)."""
        return self.scorer.members if isinstance(self.scorer, EnsembleScorer) else [self.scorer]

    @property
    def device(self) -> Any:
        return self.members[0].device

    @property
    def cfg(self) -> dict[str, Any]:
        return self.members[0].cfg

    @property
    def pre(self) -> dict[str, Any]:
        """The preprocessing preset (an ensemble's modes joined by ``+``)."""
        if isinstance(self.scorer, EnsembleScorer):
            return {"mode": "+".join(m.pre["mode"] for m in self.members)}
        return self.scorer.pre

    @property
    def ood_margin(self) -> float | None:
        """The out-of-distribution flag's margin over the validation quantile (None: no detector):
        a record with ``ood_score * ood_margin > 1`` is unlike the training site, if not flagged."""
        margins = [m.ood.margin for m in self.members if m.ood is not None]
        return min(margins) if margins else None

    @property
    def temperature(self) -> float:
        return self.scorer.temperature if isinstance(self.scorer, ModelScorer) else 1.0

    @property
    def calibration(self) -> dict[str, float]:
        """Temperature and prior offset applied to the logit (an ensemble's log-odds are already calibrated)."""
        if isinstance(self.scorer, EnsembleScorer):
            return {"temperature": 1.0, "logit_offset": 0.0}
        return self.scorer.calibration

    @property
    def model(self) -> Any:
        """The model of a single-model checkpoint (an ensemble's are ``members[i].model``)."""
        if isinstance(self.scorer, EnsembleScorer):
            raise AttributeError("an ensemble has one model per member: use .members[i].model")
        return self.scorer.model

    @property
    def crop_mode(self) -> bool:
        """True when the model (or any ensemble member) sees a lesion crop, so every image needs a mask."""
        return self.scorer.crop_mode

    @property
    def saliency_upsample(self) -> str:
        return self.scorer.saliency_upsample

    def set_saliency_upsample(self, mode: str) -> None:
        """Draw Grad-CAM maps with ``bicubic`` (default) or ``bilinear`` interpolation of the coarse map."""
        self.scorer.set_saliency_upsample(mode)

    def predict(
        self,
        inputs: Any,
        masks: Sequence[Any] | None = None,
        saliency: str = "none",
        tta: int = 0,
        keep_identifiers: bool = False,
        return_maps: bool = False,
        find_masks: bool = False,
        on_item: Callable[[int, dict[str, Any], tuple | None], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Score images; one record per image (see the module docstring for the fields).

        Args:
            inputs: paths, folders, datalists or numpy arrays (2D grey or HxWx3), or a list.
            masks: one mask per image (path, list of paths, array,
                :class:`~breastai.data.readers.masks.LesionBox` or None), in order.
            saliency: ``gradcam``, ``gradcam++``, ``occlusion`` or ``none``.
            tta: number of test-time augmentations for ``uncertainty`` (0 disables).
            keep_identifiers: DICOM ``id`` = file name (plus ``patient_id``) instead of the UID hash.
            return_maps: add ``saliency_map``, ``image`` (for overlays) and ``lesion_mask`` (the
                mask, box or lesion outline the model was given, None without one), all in the
                original geometry.
            find_masks: use BUSI-style sibling ``<stem>_mask*.png`` files as masks.
            on_item: called as ``on_item(index, record, maps)`` for every record (``index``: its
                place among the records) as soon as it is scored, ``maps`` = (map, image, lesion
                mask) or None; writers store what they need and may add fields to the record (see
                :mod:`breastai.inference.writers`).

        Returns:
            Records, one per input, or with a segmenter one per lesion found; a failed input has
            ``error`` set and the score fields empty.
        """
        if saliency not in METHODS:
            raise ValueError(f"unknown saliency method {saliency!r}; choose one of {', '.join(METHODS)}")
        items, notes = expand_inputs(inputs, masks, find_masks)
        items = expand_frames_of_items(items, self.scorer.reader_options)
        for n in notes:
            log.info("%s", n)
        records: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            for rec, scored in self._predict_item(item, saliency, tta, keep_identifiers, i):
                arrays = None if scored is None or scored.saliency is None else (scored.saliency, scored.image,
                                                                                 scored.lesion_mask)
                if on_item is not None:
                    on_item(len(records), rec, arrays)
                for key in _PRIVATE:  # for writers only: the unredacted path never reaches the records
                    rec.pop(key, None)
                if return_maps and arrays is not None:
                    rec["saliency_map"], rec["image"], rec["lesion_mask"] = arrays
                records.append(rec)
        return records

    def _predict_item(self, item: PredictItem, saliency: str, tta: int, keep: bool,
                      index: int) -> list[tuple[dict[str, Any], Scored | None]]:
        """The records of one input: one, or with the segmenter one per lesion (or "no lesion found")."""
        rec: dict[str, Any] = {k: None for k in RECORD_FIELDS}
        rec.update(source=item.source, has_mask=False)
        if not isinstance(item.image, np.ndarray):
            rec.update(_path=str(item.image), _frame=item.frame)
        ident, secrets = _identity(item, keep, index)
        rec.update(ident)
        rec.update(_grouping(item))
        if item.frame is not None and item.frame_suffix:
            rec["id"] = f"{rec['id']}_f{item.frame}"
        refused = self._modality_refusal(item, rec["source"])
        if refused is not None:
            rec["error"] = refused
            return [(rec, None)]
        decoded: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}

        def decode(options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
            key = reader_key(options)
            if key not in decoded:
                decoded[key] = _decode(item, options)
            return decoded[key]

        try:
            image, meta = decode(self.scorer.reader_options)
            if keep and meta.get("format") == "dicom":
                rec.update(_identifiers(item))
            arr = np.asarray(image, dtype=np.float32)
            finite = arr[np.isfinite(arr)]
            if finite.size == 0 or float(finite.max()) == float(finite.min()):
                raise ImageReadError(f"{item.source}: image is blank (every pixel has the same value)")
            mask = item.mask
            if item.has_mask_input:
                rec["_mask_origin"] = "box" if isinstance(mask, LesionBox) else "given"
            else:
                for provide in self.mask_providers:
                    mask = provide(item, image, meta)
                    if mask is not None:
                        rec["_mask_origin"] = f"provider:{getattr(provide, '__name__', type(provide).__name__)}"
                        break
            lesions: list[Lesion | None] = [None]
            outline = None
            if "_mask_origin" not in rec and self.segmenter is not None:
                outline = self.segmenter.outline(*decode(self.segmenter.reader_options), item.source)
                if not outline.lesions:  # an answer, not an error: no malignancy score of an empty crop
                    rec.update(no_lesion_fields(outline))
                    return [(rec, None)]
                lesions, rec["_mask_origin"] = list(outline.lesions), "segmenter"
            scores = [self.scorer.score_decoded(decode, mask if les is None else les.mask, item.source, rec["id"],
                                                saliency, tta, item.mask_given) for les in lesions]
        except Exception as exc:  # one bad input must not stop the run; the record says why
            msg = str(exc) if isinstance(exc, (ImageReadError, CheckpointError)) else f"{type(exc).__name__}: {exc}"
            if item.source not in msg and item.source != "<array>":
                msg = f"{item.source}: {msg}"
            if secrets:
                from breastai.data.readers.redaction import redact

                msg = redact(msg, secrets)
            rec.update(error=msg, probability=None, label=None, logit=None, uncertainty=None)
            return [(rec, None)]
        header = dicom_header(item.image) if any(s.lesion_mask is not None for s in scores) else None
        out = []
        for les, scored in zip(lesions, scores):
            r = dict(rec)
            if les is not None and outline is not None:
                r.update(id=lesion_id(rec["id"], les.component, len(lesions)), component=les.component,
                         lesion_probability=round(les.probability, 6), _outline=(outline.image, les.mask))
            out.append((r, self._scored_record(r, scored, header, item.pixel_size_mm)))
        return out

    def _scored_record(self, rec: dict[str, Any], scored: Scored, header: Any, pixel_size_mm: Any) -> Scored | None:
        """Fill ``rec`` from one score; returns the score, or None when it is unusable (``rec`` then has the error)."""
        if not np.isfinite(scored.calibrated_logit):  # corrupt weights or input: never a silent "benign"
            rec.update(error=f"{rec['source']}: the score is not a number ({scored.logit}); the checkpoint's weights "
                             "or this input are corrupt", logit=None)
            return None
        p = float(apply_temperature(np.array([scored.calibrated_logit]), 1.0)[0])
        rec.update(has_mask=scored.has_mask, logit=scored.logit, probability=p,
                   label=self.classes[int(p >= self.threshold)], _calibrated_logit=float(scored.calibrated_logit))
        origin = rec.get("_mask_origin")
        if scored.has_mask and origin:
            source = origin.split(":")[0]
            rec.update(mask_source=source, scored_on="lesion" if self.scorer.reads_mask else "image")
            if source != "box":  # a box is no outline: it has no lesion size
                rec.update(size_fields(scored.lesion_mask, header, pixel_size_mm))
        if scored.ood_score is not None:
            rec.update(ood=bool(scored.ood_score > 1.0), ood_score=scored.ood_score)
        if scored.tta_calibrated is not None:
            spread = float(np.std(apply_temperature(scored.tta_calibrated, 1.0)))
            if not np.isfinite(spread):
                rec.update(error=f"{rec['source']}: a test-time augmentation score is not a number; the checkpoint's "
                                 "weights or this input are corrupt", probability=None, label=None, logit=None)
                return None
            rec["uncertainty"] = spread
        return scored

    def _modality_refusal(self, item: PredictItem, source: str) -> str | None:
        """Why a DICOM input of a modality the checkpoint never saw is not scored (None: it is).

        Read from the header alone. Every member of an ensemble must know the modality: the
        ensemble's score is a weighted sum of every member's, so one member scoring an image
        unlike any it learned from spoils it.
        """
        trained = [m.modalities for m in self.members]
        if self.segmenter is not None:  # the segmenter, last: it must know the modality too
            trained.append(self.segmenter.modalities)
        if not any(trained) or isinstance(item.image, np.ndarray):
            return None
        from breastai.data.modality import dicom_modality, modality_refusal
        from breastai.data.readers.dicom_header import is_dicom

        path = Path(item.image)
        if not (is_dicom(path) and path.is_file()):
            return None
        modality = dicom_modality(path)
        for i, mods in enumerate(trained):
            why = modality_refusal(source, modality, mods)
            if why is not None and self.segmenter is not None and i == len(trained) - 1:
                return why.replace("this checkpoint", "the segmenter")
            if why is not None:
                return why if len(self.members) == 1 else why.replace("this checkpoint", f"ensemble member {i + 1}")
        return None


def _decode(item: PredictItem, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The item's image as a reader with ``options`` reads it (one frame of a multi-frame DICOM)."""
    if isinstance(item.image, np.ndarray):
        return item.image, {"reader": "array"}
    return load_image(item.image, frame_options(options, item.frame))


def _identity(item: PredictItem, keep: bool, index: int) -> tuple[dict[str, Any], list[str]]:
    """``id`` and ``source`` of an input and the header values to redact from its messages.

    Decided before the pixels are read, so that a DICOM file that then fails to load is named as
    safely as one that loads: its id is the hash of its SOP Instance UID, and its path and errors
    lose every identifying header value (folder and file names exported from PACS often carry the
    patient's name, ID or the UIDs).
    """
    default = item.case_id or (Path(item.source).name if item.source != "<array>" else f"array{index}")
    if keep or isinstance(item.image, np.ndarray):
        return {"id": default}, []
    from breastai.data.readers.dicom_header import is_dicom, private_identity
    from breastai.data.readers.redaction import holds_identifier, redact

    if not is_dicom(item.image):
        return {"id": default}, []
    secrets, sop_hash = private_identity(item.image)
    rid = item.case_id
    # A case_id made from the file name (a folder input, or `prepare folder`) may hold an identifier.
    if rid is None or rid == Path(item.source).stem or holds_identifier(rid, secrets):
        rid = sop_hash or f"dicom-{index:05d}"
    return {"id": rid, "source": redact(item.source, secrets)}, secrets


def _grouping(item: PredictItem) -> dict[str, str]:
    """``exam``, ``laterality`` and ``view`` of an input, where it has them: from its datalist row, a
    DICOM file filling the rest from its header (the exam as the hash of its Study Instance UID)."""
    if isinstance(item.image, np.ndarray):
        return dict(item.grouping)
    from breastai.data.grouping import grouping_of

    return {k: v for k, v in grouping_of({**item.grouping, "image": item.image}).items() if v}


def _identifiers(item: PredictItem) -> dict[str, str]:
    """``patient_id`` and ``sop_instance_uid`` columns (``--keep-identifiers``)."""
    import pydicom

    ds = pydicom.dcmread(item.image, stop_before_pixels=True, force=True)
    return {"patient_id": str(ds.get("PatientID", "")), "sop_instance_uid": str(ds.get("SOPInstanceUID", ""))}
