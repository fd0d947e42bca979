"""Inference with an ensemble checkpoint (see :mod:`breastai.ensemble`).

Each member scores the input with its own preprocessing, calibration and saliency method;
the record carries the combined probability, the combined TTA spread and the weight-averaged
saliency map (every member's map is already in the original image geometry, so they add up
pixel by pixel). A member that cannot score the input (e.g. a crop model given no mask) makes
the whole record fail with that member's message.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from breastai.inference.inputs import PredictItem
from breastai.inference.predictor import Predictor
from breastai.models.calibration import calibrated_logit
from breastai.models.checkpoint import CheckpointError
from breastai.models.saliency import normalise_map

__all__ = ["EnsemblePredictor"]


class EnsemblePredictor(Predictor):
    """A loaded ensemble checkpoint; same ``predict`` API and records as :class:`Predictor`.

    Args:
        state: an ensemble checkpoint dict (``state["ensemble"]``: members, weights, bias).
        device: ``auto``, ``cpu`` or ``cuda``.
        source: where the checkpoint came from (for messages).
    """

    def __init__(self, state: dict[str, Any], device: str = "auto", source: str = "<state>"):
        try:
            ens = state["ensemble"]
            self.weights = np.asarray(ens["weights"], dtype=np.float64)
            self.bias = float(ens["bias"])
            member_states = list(ens["members"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: not a usable ensemble checkpoint ({exc})") from exc
        if len(member_states) != len(self.weights) or not member_states:
            raise CheckpointError(f"{source}: {len(member_states)} members but {len(self.weights)} weights")
        self.members = [Predictor(s, device=device, source=f"{source} [member {i}]") for i, s in enumerate(member_states)]
        self.cfg, self.source = state["config"], source
        self.classes = list(state["classes"])
        self.threshold = float(state.get("threshold", 0.5))
        self.temperature = 1.0
        self.calibration = {"temperature": 1.0, "logit_offset": 0.0}
        self.pre = {"mode": "+".join(m.pre["mode"] for m in self.members)}
        self.device = self.members[0].device
        # Members read the same file: decode it once per input and reader setting, not once per
        # member (members trained with other reader options, e.g. no DICOM breast crop, get their own),
        # and read its DICOM header for naming once.
        self._item: PredictItem | None = None
        self._cache: dict[tuple, Any] = {}
        for m in self.members:
            m._load = lambda item, m=m: self._once(item, ("load", json.dumps(m.reader_options, sort_keys=True, default=str)),
                                                   lambda: Predictor._load(m, item))
            m._identity = lambda item, keep, index: self._once(
                item, ("identity", keep, index), lambda: Predictor._identity(item, keep, index))
            m._identifiers = lambda item: self._once(item, ("identifiers",), lambda: Predictor._identifiers(item))

    def _once(self, item: PredictItem, key: tuple, make: Any) -> Any:
        """``make()`` once per input (the cache is kept for the input being predicted only)."""
        if self._item is not item:
            self._item, self._cache = item, {}
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def set_saliency_upsample(self, mode: str) -> None:
        """As :meth:`Predictor.set_saliency_upsample`, for every member's maps."""
        for m in self.members:
            m.set_saliency_upsample(mode)

    @property
    def saliency_upsample(self) -> str:
        """How the members draw their Grad-CAM maps (they are set together)."""
        return self.members[0].saliency_upsample

    @property
    def crop_mode(self) -> bool:
        """True when any member sees a lesion crop (so every image needs a mask)."""
        return any(m.crop_mode for m in self.members)

    def _predict_item(self, item: PredictItem, saliency: str, tta: int, keep: bool, index: int):
        z = self.bias
        views = np.full(tta, self.bias) if tta > 0 else None
        maps, base = [], None
        rec: dict[str, Any] = {}
        for w, member in zip(self.weights, self.members):
            rec, arrays = member._predict_item(item, saliency, tta, keep, index)
            if rec["error"]:
                return rec, None
            z += w * float(calibrated_logit(np.array([rec["logit"]]), member.calibration)[0])
            if views is not None:
                views = views + w * calibrated_logit(rec.pop("_tta_logits"), member.calibration)
            if arrays is not None:
                maps.append((w, arrays[0]))
                if base is None or (base[1] is None and arrays[2] is not None):
                    base = (arrays[1], arrays[2])
        p = float(1.0 / (1.0 + np.exp(-z)))
        out = {k: v for k, v in rec.items() if not k.startswith("_")}  # the last member's record: id, source, ...
        out.update(logit=z, probability=p, label=self.classes[int(p >= self.threshold)])
        if views is not None:
            out["uncertainty"] = float(np.std(1.0 / (1.0 + np.exp(-views))))
        arrays = None
        if maps:
            total = sum(w for w, _ in maps)
            m = sum((w / total if total > 0 else 1.0 / len(maps)) * mp for w, mp in maps)
            arrays = (normalise_map(m), *base)
        return out, arrays
