"""An ensemble checkpoint as a scorer composed of member scorers (see :mod:`breastai.engine.ensemble`).

Each member scores the input with its own preprocessing, calibration and saliency method; the
ensemble adds their calibrated log-odds with its fitted weights and bias, combines the TTA views
the same way, and averages the members' maps by weight (every member's map is already in the
stored image geometry, so they add up pixel by pixel). A member that cannot score the input (a
crop model given no mask) makes the whole input fail with that member's message.

The members never decode the file themselves: the predictor decodes it once per distinct reader
setting and hands every member the decode made with its own options.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from breastai.inference.scorer import ModelInput, ModelScorer, Scored
from breastai.models.checkpoint import Checkpoint, CheckpointError
from breastai.models.saliency import normalise_map

__all__ = ["EnsembleScorer", "reader_key", "score_lesions", "image_scorer", "image_log_odds"]


def reader_key(options: dict[str, Any]) -> str:
    """A decode's identity: inputs decoded with equal reader options are decoded once."""
    return json.dumps(options, sort_keys=True, default=str)


class EnsembleScorer:
    """Members' calibrated log-odds ``c_i`` combined as ``sum_i w_i c_i + b``.

    Args:
        members: the member scorers.
        weights: one weight per member.
        bias: the combination's bias.
        source: where the checkpoint came from (for messages).

    Raises:
        CheckpointError: no members, a weight count that does not match, or members that read
            DICOM frames differently (their inputs would not be the same images).
    """

    def __init__(self, members: Sequence[ModelScorer], weights: Sequence[float], bias: float, source: str = "<state>"):
        self.members = list(members)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = float(bias)
        if len(self.members) != len(self.weights) or not self.members:
            raise CheckpointError(f"{source}: {len(self.members)} members but {len(self.weights)} weights")
        if len({str(_frame_policy(m.reader_options)) for m in self.members}) > 1:
            raise CheckpointError(f"{source}: the members read multi-frame DICOM with different frame policies")
        self.source = source

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: torch.device, source: str = "<state>") -> "EnsembleScorer":
        """Build the members of an ensemble checkpoint."""
        members = [ModelScorer(m, device, source=f"{source} [member {i}]") for i, m in enumerate(ckpt.members or [])]
        return cls(members, ckpt.member_weights, ckpt.bias, source)

    @property
    def reader_options(self) -> dict[str, Any]:
        """The first member's reader options (their frame policy is shared by every member)."""
        return self.members[0].reader_options

    @property
    def reads_mask(self) -> bool:
        """Whether the lesion mask changes any member's score."""
        return any(m.reads_mask for m in self.members)

    @property
    def crop_mode(self) -> bool:
        """True when any member sees a lesion crop (so every image needs a mask)."""
        return any(m.crop_mode for m in self.members)

    @property
    def saliency_upsample(self) -> str:
        """How the members draw their Grad-CAM maps (they are set together)."""
        return self.members[0].saliency_upsample

    def set_saliency_upsample(self, mode: str) -> None:
        """As :meth:`ModelScorer.set_saliency_upsample`, for every member's maps."""
        for m in self.members:
            m.set_saliency_upsample(mode)

    def fingerprint(self) -> dict[str, Any]:
        """What decides the ensemble's scores: its members' fingerprints, weights and bias."""
        return {"members": [m.fingerprint() for m in self.members], "weights": [float(w) for w in self.weights],
                "bias": self.bias}

    def score_decoded(self, decode: Callable[[dict[str, Any]], tuple[np.ndarray, dict[str, Any]]], mask: Any,
                      source: str, case_id: str, saliency: str, tta: int, mask_given: bool,
                      ready: Callable[[ModelScorer], ModelInput] | None = None,
                      memo: dict[int, Scored] | None = None) -> Scored:
        """Score with every member on its own decode (``decode(reader_options)``), or on its input
        preprocessed ahead (``ready(member)``, see :meth:`ModelScorer.score_decoded`), and combine.

        ``memo`` (one dict per image, see :func:`score_lesions`) keeps what the members that read
        no mask made of the image, for the image's next lesion, when some member reads the mask
        (that member gives the lesion's outline)."""
        z = self.bias
        views = np.full(tta, self.bias) if tta > 0 else None
        maps, base, lesion_mask, has_mask = [], None, None, False
        ood: float | None = None
        for w, member in zip(self.weights, self.members):
            shared = memo is not None and not member.reads_mask and self.reads_mask
            s = memo.get(id(member)) if shared else None
            if s is None:
                s = member.score_decoded(decode, mask, source, case_id, saliency, tta, mask_given, ready)
                if shared:
                    s = memo[id(member)] = replace(s, lesion_mask=None, has_mask=False)
            z += w * s.calibrated_logit
            if views is not None:
                views = views + w * s.tta_calibrated
            if s.saliency is not None:
                maps.append((w, s.saliency))
                base = s.image if base is None else base
            lesion_mask = s.lesion_mask if lesion_mask is None else lesion_mask
            has_mask = has_mask or s.has_mask  # not the last member's word alone
            if s.ood_score is not None:  # unlike any one member's training images spoils the sum
                ood = s.ood_score if ood is None else max(ood, s.ood_score)
        out = Scored(logit=z, calibrated_logit=z, has_mask=has_mask, tta_calibrated=views, ood_score=ood,
                     lesion_mask=lesion_mask)
        if maps:
            total = sum(w for w, _ in maps)
            out.saliency = normalise_map(sum((w / total if total > 0 else 1.0 / len(maps)) * mp for w, mp in maps))
            out.image = base
        return out


def score_lesions(scorer: ModelScorer | EnsembleScorer, decode: Callable[[dict[str, Any]], tuple[np.ndarray, dict]],
                  masks: Sequence[Any], source: str, case_id: str, saliency: str, tta: int, mask_given: bool,
                  ready: Callable[[ModelScorer], ModelInput] | None = None) -> list[Scored]:
    """Each of one image's lesion masks scored by ``scorer`` (``score_decoded``'s arguments); an
    ensemble's whole-image members score the image once, not once per lesion (they would give the
    same score and map each time)."""
    if not isinstance(scorer, EnsembleScorer):
        return [scorer.score_decoded(decode, m, source, case_id, saliency, tta, mask_given, ready) for m in masks]
    memo: dict[int, Scored] = {}  # one per image
    return [scorer.score_decoded(decode, m, source, case_id, saliency, tta, mask_given, ready, memo) for m in masks]


def image_scorer(scorer: ModelScorer | EnsembleScorer, recalibration: Sequence[Any] = ()
                 ) -> ModelScorer | EnsembleScorer | None:
    """What still scores an image in which the segmenter found no lesion: the members that read the
    whole image and no mask, their own calibrated log-odds averaged, then mapped by the ensemble's
    site ``recalibration`` (``breastai calibrate``, which an ensemble holds in its weights); a single
    whole-image model is itself (its calibration already holds any recalibration). None when every
    member reads the lesion. The combination's weights are left out: they were fitted on images
    with a lesion found."""
    if not isinstance(scorer, EnsembleScorer):
        return None if scorer.reads_mask else scorer
    whole = [m for m in scorer.members if not m.reads_mask]
    if not whole:
        return None
    a, b = 1.0, 0.0
    for r in recalibration:  # each maps z to slope * z + intercept, in turn
        a, b = float(r.slope) * a, float(r.slope) * b + float(r.intercept)
    return EnsembleScorer(whole, [a / len(whole)] * len(whole), b, source=scorer.source)


def image_log_odds(whole: ModelScorer | EnsembleScorer, decode: Callable[[dict[str, Any]], tuple[np.ndarray, dict]],
                   source: str, case_id: str) -> float:
    """The calibrated log-odds an :func:`image_scorer` gives one decoded image.

    Raises:
        ValueError: the score is not a number (corrupt weights or input).
    """
    z = float(whole.score_decoded(decode, None, source, case_id, "none", 0, False).calibrated_logit)
    if not np.isfinite(z):
        raise ValueError(f"{source}: the whole-image score is not a number ({z}); the checkpoint's weights or this "
                         "input are corrupt")
    return z


def _frame_policy(reader_options: dict[str, Any]) -> Any:
    return ((reader_options or {}).get("dicom") or {}).get("frame", "middle")
