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
from functools import partial
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from breastai.core.distributed import resolve_device
from breastai.data.readers.masks import LesionBox
from breastai.data.readers.registry import ImageReadError
from breastai.inference.ensemble import EnsembleScorer, image_log_odds, image_scorer, reader_key, score_lesions
from breastai.inference.inputs import PredictItem, expand_frames_of_items, expand_inputs
from breastai.inference.loading import (Loaded, Outcome, attempt, decode_item, failure_message, grouping, identifiers,
                                        identity, image_key, loaded_inputs, refused_modality)
from breastai.inference.records import RECORD_FIELDS, Maps, check_saliency, strip_private
from breastai.inference.scorer import ModelInput, ModelScorer, Scored
from breastai.inference.segment import cancer_probability, dicom_header, lesion_id, no_lesion_fields, size_fields
from breastai.models.adaptation import Adaptation
from breastai.models.calibration import Recalibration, apply_temperature
from breastai.models.checkpoint import Checkpoint
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.lesions import Lesion
from breastai.models.outliner import Outliner, SegmenterSource, resolve_segmenter

__all__ = ["Predictor", "MaskProvider"]

log = logging.getLogger("breastai")



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
        adaptation: the checkpoint's batch-norm adaptations (``breastai adapt``), for the run record.
        segmenter: outlines the inputs still without a mask after the providers, one record per
            lesion (see :mod:`breastai.inference.segment`); None: no automatic outlines.
        fitted_on: what an ensemble's combination was fitted on (its config's ``ensemble.fitted_on``,
            set only by ``ensemble --segmenter-run``); a record scored on a given mask or box is
            then warned about, once.
    """

    def __init__(self, scorer: ModelScorer | EnsembleScorer, classes: Sequence[str], threshold: float,
                 source: str = "<state>", mask_providers: Sequence[MaskProvider] = (),
                 recalibration: Sequence[Recalibration] | None = None, segmenter: Outliner | None = None,
                 adaptation: Sequence[Adaptation] | None = None, fitted_on: str | None = None):
        self.scorer = scorer
        # An ensemble combined on automatic outlines (`ensemble --segmenter-run`) was not fitted for a
        # reader's outline: said once per predictor, when the first such record is scored.
        self.fitted_on, self._told_outline = fitted_on, False
        self.classes = list(classes)
        self.threshold = float(threshold)
        self.source = source
        self.mask_providers = list(mask_providers)
        self.recalibration = list(recalibration or [])
        self.adaptation = list(adaptation or [])
        self.segmenter = segmenter
        self.image_scorer = image_scorer(scorer, self.recalibration)

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
                   resolve_segmenter(segmenter, ckpt, dev), ckpt.adaptation,
                   (ckpt.config.get("ensemble") or {}).get("fitted_on"))

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

    def fingerprint(self) -> dict[str, Any]:
        """What decides this predictor's records: its models' fingerprints (weights, calibration,
        configuration), threshold and classes, its segmenter's and its mask providers' names; the
        settings a resumed run must share (``run_predict(..., resume=True)``)."""
        seg = self.segmenter
        return {"scorer": self.scorer.fingerprint(), "threshold": self.threshold, "classes": self.classes,
                "segmenter": None if seg is None else seg.fingerprint(),
                "mask_providers": [_provider_name(p) for p in self.mask_providers]}

    def expand(self, inputs: Any, masks: Sequence[Any] | None = None, find_masks: bool = False) -> list[PredictItem]:
        """The inputs as items (:func:`breastai.inference.inputs.expand_inputs`), a multi-frame DICOM's
        frames as the checkpoint's frame policy says; notes on skipped folder entries are logged.

        Raises:
            ValueError: the number of masks does not match the number of images.
        """
        items, notes = expand_inputs(inputs, masks, find_masks)
        for n in notes:
            log.info("%s", n)
        return expand_frames_of_items(items, self.scorer.reader_options)

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
        workers: int = 0,
    ) -> list[dict[str, Any]]:
        """Score images; one record per image (see the module docstring for the fields).

        Args:
            inputs: paths, folders, datalists or numpy arrays (2D grey or HxWx3), or a list.
            masks: one mask per image (path, list of paths, array,
                :class:`~breastai.data.readers.masks.LesionBox` or None), in order.
            saliency: ``gradcam``, ``gradcam++``, ``occlusion`` or ``none``.
            tta: number of test-time augmentations for ``uncertainty`` (0 disables).
            keep_identifiers: DICOM ``id`` = file name (plus ``patient_id``) instead of the UID hash.
            return_maps: add ``saliency_map``, ``image`` (for overlays; both None with ``saliency``
                ``none``) and ``lesion_mask`` (the mask, box or lesion outline the model was given,
                None without one), all in the original geometry, to records that have a map or a mask.
            find_masks: use BUSI-style sibling ``<stem>_mask*.png`` files as masks.
            on_item: called as ``on_item(index, record, maps)`` for every record (``index``: its
                place among the records) as soon as it is scored, ``maps`` = (map, image, lesion
                mask), see :data:`Maps`, or None (no map and no mask); writers store what they need
                and may add fields to the record (see :mod:`breastai.inference.writers`).
            workers: decode and preprocess in this many worker processes while the networks run
                (0: in this process; the records are the same, see :mod:`breastai.inference.loading`).

        Returns:
            Records, one per input, or with a segmenter one per lesion found; a failed input has
            ``error`` set and the score fields empty.
        """
        check_saliency(saliency)
        items = self.expand(inputs, masks, find_masks)
        records: list[dict[str, Any]] = []
        for _, results in self.iter_inputs(list(enumerate(items)), saliency, tta, keep_identifiers, workers):
            for rec, arrays in results:
                if on_item is not None:
                    on_item(len(records), rec, arrays)
                strip_private(rec)
                if return_maps and arrays is not None:
                    rec["saliency_map"], rec["image"], rec["lesion_mask"] = arrays
                records.append(rec)
        return records

    def iter_inputs(self, pairs: Sequence[tuple[int, PredictItem]], saliency: str = "none", tta: int = 0,
                    keep_identifiers: bool = False,
                    workers: int = 0) -> Iterator[tuple[int, list[tuple[dict[str, Any], Maps | None]]]]:
        """Each input's records as it is done, in order: ``(position, [(record, maps), ...])``.

        ``pairs`` are ``(position, item)``: the item's place among the run's inputs names an array
        input (``array<position>``) and a DICOM without a SOP UID, so a resumed run that skips some
        inputs gives the others the ids an uninterrupted run would. A record still holds its private
        (``_``) keys, for writers (:func:`strip_private` removes them); ``maps`` = (map, image,
        lesion mask) in the stored geometry (:data:`Maps`), or None when the record has neither a map nor
        a mask. See :meth:`predict` for the other arguments.
        """
        check_saliency(saliency)
        load = partial(self._load, saliency=saliency, keep=keep_identifiers)
        for loaded in loaded_inputs(load, pairs, workers):
            yield loaded.position, [(rec, _maps(scored)) for rec, scored in self._complete(loaded, saliency, tta)]

    def _load(self, position: int, item: PredictItem, saliency: str, keep: bool) -> Loaded:
        """The load stage of one input (:mod:`breastai.inference.loading`): identity, modality, decodes
        and, where the mask is known, every model's preset. May run in a worker process."""
        rec: dict[str, Any] = {k: None for k in RECORD_FIELDS}
        rec.update(source=item.source, has_mask=False, _image=image_key(item, position))
        if not isinstance(item.image, np.ndarray):
            rec.update(_path=str(item.image), _frame=item.frame)
        ident, secrets = identity(item, keep, position)
        rec.update(ident)
        rec.update(grouping(item))
        if item.frame is not None and item.frame_suffix:
            rec["id"] = f"{rec['id']}_f{item.frame}"
        loaded = Loaded(position, item, rec, secrets)
        refused = refused_modality(item, rec["source"], [m.modalities for m in self.members], self.segmenter)
        if refused is not None:
            rec["error"], loaded.final = refused, True
            return loaded
        try:
            image, meta = decode_item(item, self.scorer.reader_options)
            if keep and meta.get("format") == "dicom":
                rec.update(identifiers(item))
            arr = np.asarray(image, dtype=np.float32)
            finite = arr[np.isfinite(arr)]
            if finite.size == 0 or float(finite.max()) == float(finite.min()):
                raise ImageReadError(f"{item.source}: image is blank (every pixel has the same value)")
        except Exception as exc:  # one bad input must not stop the run; the record says why
            self._fail(loaded, exc)
            return loaded
        loaded.decoded[reader_key(self.scorer.reader_options)] = Outcome((image, meta))
        outlined = not item.has_mask_input and bool(self.mask_providers or self.segmenter)
        others = [m.reader_options for m in self.members]
        if outlined and self.segmenter is not None:
            others.append(self.segmenter.reader_options)
        for options in others:  # a failure is the record's only if the input's code comes to use it
            if reader_key(options) not in loaded.decoded:
                loaded.decoded[reader_key(options)] = attempt(decode_item, item, options)
        if not outlined:  # the mask is known: every model's preset runs here too

            def decode(options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
                return loaded.decoded[reader_key(options)].get()

            loaded.inputs = [attempt(m.prepare, decode, item.mask, item.source, rec["id"], item.mask_given,
                                     saliency != "none") for m in self.members]
            loaded.decoded = {}  # read by nothing now: not sent back from a worker
        return loaded

    def _complete(self, loaded: Loaded, saliency: str, tta: int) -> list[tuple[dict[str, Any], Scored | None]]:
        """The records of one loaded input: one, or with the segmenter one per lesion (or "no lesion found")."""
        rec, item = loaded.record, loaded.item
        if loaded.final:
            return [(rec, None)]

        def decode(options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
            key = reader_key(options)
            if key not in loaded.decoded:
                loaded.decoded[key] = Outcome(decode_item(item, options))
            return loaded.decoded[key].get()

        ready = None
        if loaded.inputs is not None:
            inputs = dict(zip(map(id, self.members), loaded.inputs))

            def ready(member: ModelScorer) -> ModelInput:
                return inputs[id(member)].get()

        try:
            mask = item.mask
            if item.has_mask_input:
                rec["_mask_origin"] = "box" if isinstance(mask, LesionBox) else "given"
            else:
                for provide in self.mask_providers:
                    mask = provide(item, *decode(self.scorer.reader_options))
                    if mask is not None:
                        rec["_mask_origin"] = f"provider:{_provider_name(provide)}"
                        break
            lesions: list[Lesion | None] = [None]
            outline = None
            if "_mask_origin" not in rec and self.segmenter is not None:
                outline = self.segmenter.outline(*decode(self.segmenter.reader_options), item.source)
                if not outline.lesions:  # an answer, not an error: no malignancy score of an empty crop
                    rec.update(no_lesion_fields(outline))
                    if self.image_scorer is not None:  # whole-image members still rank the image (and its breast)
                        z = image_log_odds(self.image_scorer, decode, item.source, rec["id"])
                        p = float(apply_temperature(np.array([z]), 1.0)[0])
                        rec.update(image_probability=p, cancer_probability=cancer_probability(outline.presence, p),
                                   _calibrated_logit=z)
                    return [(rec, None)]
                lesions, rec["_mask_origin"] = list(outline.lesions), "segmenter"
            scores = score_lesions(self.scorer, decode, [mask if les is None else les.mask for les in lesions],
                                   item.source, rec["id"], saliency, tta, item.mask_given, ready if outline is None else None)
        except Exception as exc:  # one bad input must not stop the run; the record says why
            self._fail(loaded, exc)
            return [(rec, None)]
        header = dicom_header(item.image) if any(s.lesion_mask is not None for s in scores) else None
        out = []
        for les, scored in zip(lesions, scores):
            r = dict(rec)
            if les is not None and outline is not None:
                r.update(id=lesion_id(rec["id"], les.component, len(lesions)), component=les.component,
                         lesion_probability=round(les.probability, 6), _outline=(outline.image, les.mask))
            s = self._scored_record(r, scored, header, item.pixel_size_mm)
            if outline is not None and s is not None:
                r["cancer_probability"] = cancer_probability(outline.presence, r["probability"])
            out.append((r, s))
        return out

    @staticmethod
    def _fail(loaded: Loaded, exc: Exception) -> None:
        """Make ``loaded``'s record the error record of ``exc`` (named by its source, identifiers redacted)."""
        item, rec = loaded.item, loaded.record
        msg = failure_message(exc)
        if item.source not in msg and item.source != "<array>":
            msg = f"{item.source}: {msg}"
        if loaded.secrets:
            from breastai.data.readers.redaction import redact

            msg = redact(msg, loaded.secrets)
        rec.update(error=msg, probability=None, label=None, logit=None, uncertainty=None)
        loaded.final = True

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
            if source != "segmenter" and self.fitted_on and not self._told_outline:
                self._told_outline = True
                log.warning("%s: its members' combination was fitted on %s; %s came with a %s, which it was "
                            "not fitted for (its probability may be off; predict without the mask to use the "
                            "segmenter)", self.source, self.fitted_on, rec["source"], "box" if source == "box" else "mask")
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


def _maps(scored: Scored | None) -> Maps | None:
    """A record's arrays for the writers: the map (with a saliency method) and the outline the model
    saw, each whatever the other; None when it has neither (a failed input, no map and no mask)."""
    if scored is None or (scored.saliency is None and scored.lesion_mask is None):
        return None
    return scored.saliency, scored.image, scored.lesion_mask


def _provider_name(provide: Any) -> str:
    return getattr(provide, "__name__", type(provide).__name__)
