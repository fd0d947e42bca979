"""Breast- and exam-level scores from per-image calibrated log-odds.

A screening decision is made per breast and per exam, not per film. This module turns per-image
scores (:class:`ImageScore`) into the scores of a level (:class:`LevelScore`); it is pure, so
cross-validation, ``evaluate`` (engine) and ``predict`` (inference) aggregate alike.

Levels (the key that makes one group of images):

- ``lesion``: one datalist row (one finding; a BUSI image is one row).
- ``image``: the rows that share an image file (several findings of one mini-MIAS film).
- ``breast``: the images of one exam and side, ``(exam, laterality)``.
- ``exam``: the images of one exam (a DICOM study; a datalist ``exam`` column, else its ``group``).

Rule. With ``z_i`` the calibrated log-odds of the images ``i`` of a group and ``sigma`` the
logistic function, the group's raw score ``s`` is

- ``max``:      ``s = max_i z_i`` (the default: the most suspicious image decides),
- ``mean``:     ``s = (1/n) sum_i z_i``,
- ``noisy_or``: ``s = logit(1 - prod_i (1 - sigma(z_i)))`` (the group is malignant unless every
  image is benign, the images taken as independent),

over every image of the group (an exam's images directly, not its breasts' scores: a film without
laterality still counts in its exam). The level's calibrated log-odds are ``z = a s + b``, the
probability ``sigma(z)``, and the label is positive when ``sigma(z) >= t``. By default ``a = 1``,
``b = 0`` and ``t`` is the checkpoint's image threshold: with ``max`` a breast is then positive
exactly when one of its images is. :func:`fit_level_rule` instead picks the rule, ``a``, ``b`` and
``t`` on validation data that has the level's structure: each rule is recalibrated by Platt
scaling (``a``, ``b`` minimise the cross-entropy against Platt's prior-corrected targets, which
keep them finite on separable data), the rule with the lowest recalibrated cross-entropy wins
(ties: the order max, mean, noisy_or), and ``t`` is chosen on its recalibrated probabilities
(:func:`breastai.reporting.metrics.choose_threshold`).

Missing views are scored with what is there: the record says how many images it has and which
views they were (``views_present``). The driver of a group is the image with the highest ``z_i``
(the first, on ties), whatever the rule. A group's truth (where the images have labels) is
malignant when any of its images is.

Images and lesions. A row (:class:`ImageScore`) is one scored record: an image, a finding of an
image (a datalist row with its own outline) or one lesion a segmenter found, so one image may give
several rows. A group counts its distinct images (``n_images``: by ``image``, the file and frame,
else the row's id) and its lesions (``n_lesions``: the rows' ``n_lesions``, one per scored finding
or lesion). A row whose image the segmenter found no lesion in is an image with 0 lesions and no
score (``log_odds`` None): it counts among the images and never enters the combination, so ``z_i``
above runs over the scored rows only; where the classifier's whole-image members scored that image
(its ``image_probability``), that score is its ``log_odds`` and it enters like any image. A group none of whose rows was scored has no score (``raw``,
``log_odds``, ``probability`` and ``driver`` None: predict reports it as "no lesion found"), or
with ``unscored_last`` (evaluate and rule fitting, which need a number for every group) the raw
score ``min(NO_LESION_LOG_ODDS, lowest scored group's raw - 1)``: probability about 0, below every
scored group, the rule ``evaluate --auto-outline`` applies to a row where no lesion is found.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import special

from breastai.models.calibration import fit_platt
from breastai.reporting.metrics import MetricError, choose_threshold

__all__ = ["LEVELS", "RULES", "NO_LESION_LOG_ODDS", "unscored_floor", "ImageScore", "LevelRule", "LevelScore",
           "LevelError", "combine_log_odds", "level_key", "aggregate", "default_rule", "fit_level_rule", "level_rows"]

LEVELS = ("lesion", "image", "breast", "exam")
# The calibrated log-odds of "no lesion found" where a number is needed (evaluate): sigmoid about
# 1e-13, i.e. probability 0; groups and rows below every scored one take at most this.
NO_LESION_LOG_ODDS = -30.0
RULES = ("max", "mean", "noisy_or")


def unscored_floor(scored: Sequence[float]) -> float:
    """The log-odds given to what was not scored where a number is needed:
    ``min(NO_LESION_LOG_ODDS, lowest scored - 1)``, probability about 0 and below everything scored."""
    return min([NO_LESION_LOG_ODDS, *(float(v) - 1.0 for v in scored)])
LATERALITIES = ("L", "R", "B")


class LevelError(ValueError):
    """Images cannot be grouped at a level, or a level's rule cannot be fitted; the message says which and why."""


@dataclass(frozen=True)
class ImageScore:
    """One image's (or one finding's) calibrated log-odds and where it belongs.

    Attributes:
        case_id: the row's id (a predict record's ``id``).
        log_odds: calibrated log-odds; None: not scored (the segmenter found no lesion in the image).
        label: truth, 1 malignant / 0 benign, or None when unknown.
        exam: exam key (hashed Study Instance UID for DICOM), or None.
        laterality: ``L``, ``R`` or ``B``, or None.
        view: view position (``CC``, ``MLO``, ...), or None.
        image: the image the row reads (its file and frame, or a key of them; rows of one film,
            and the lesion records of one image, share it), or None (the row is its own image).
        fields: other columns of the row, for subgroups (strings).
        n_lesions: the lesions the row stands for: 1 for a scored record (a lesion, a finding, an
            image scored whole), the lesions an automatic outline of a datalist row found (its
            score is theirs combined), 0 where none was found.
    """

    case_id: str
    log_odds: float | None
    label: int | None = None
    exam: str | None = None
    laterality: str | None = None
    view: str | None = None
    image: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    n_lesions: int = 1


@dataclass(frozen=True)
class LevelRule:
    """How one level combines and recalibrates its images' log-odds (see the module docstring).

    Attributes:
        level: one of :data:`LEVELS`.
        rule: one of :data:`RULES`.
        slope, bias: ``z = slope * s + bias``.
        threshold: probability threshold at this level; None: the checkpoint's image threshold.
        source: where it came from (``default`` or ``fitted on ...``).
        n_fit: groups it was fitted on (0 for the default).
    """

    level: str
    rule: str = "max"
    slope: float = 1.0
    bias: float = 0.0
    threshold: float | None = None
    source: str = "default"
    n_fit: int = 0

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise LevelError(f"unknown level {self.level!r}; choose one of {', '.join(LEVELS)}")
        if self.rule not in RULES:
            raise LevelError(f"unknown combination rule {self.rule!r}; choose one of {', '.join(RULES)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LevelRule":
        """The rule of a :meth:`to_dict` dict.

        Raises:
            LevelError: a missing level, or an unknown level or rule.
        """
        if "level" not in d:
            raise LevelError(f"a level rule needs 'level', got keys {sorted(d)}")
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in keys})


@dataclass(frozen=True)
class LevelScore:
    """The combined score of one group of images.

    Attributes:
        level: the level.
        id: the group key.
        members: case ids of its rows (images, findings, lesion records), in input order.
        views_present: the distinct views of its images, sorted (empty when none is known).
        laterality: the side of a breast (or of every image of an exam that has one side), else None.
        raw: ``s``, the rule's combination before recalibration; None: no row was scored.
        log_odds: ``z``, calibrated at this level; None: no row was scored (no lesion found).
        label: truth (max of the members' labels), or None when a member's is unknown.
        driver: case id of the scored row with the highest log-odds (None: none was scored).
        n_images: distinct images among the rows (see the module docstring).
        n_lesions: the rows' lesions (0: the segmenter found none in any image).
        fields: the members' other columns where they all agree.
    """

    level: str
    id: str
    members: tuple[str, ...]
    views_present: tuple[str, ...]
    laterality: str | None
    raw: float | None
    log_odds: float | None
    label: int | None
    driver: str | None
    n_images: int
    n_lesions: int
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def probability(self) -> float | None:
        """``sigma(log_odds)``; None when the group has no score."""
        return None if self.log_odds is None else float(special.expit(self.log_odds))


def combine_log_odds(z: Sequence[float], rule: str = "max") -> float:
    """The raw group score ``s`` of the log-odds ``z`` by ``rule`` (formulas in the module docstring).

    Raises:
        LevelError: no scores, a non-finite score, or an unknown rule.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0 or not np.all(np.isfinite(z)):
        raise LevelError(f"a group needs finite log-odds, got {z.tolist()}")
    if rule == "max":
        return float(z.max())
    if rule == "mean":
        return float(z.mean())
    if rule == "noisy_or":
        # log P(every image benign) = sum log(1 - sigma(z_i)) = -sum softplus(z_i); in logs, so that
        # confident images neither underflow nor round the group to exactly 0 or 1.
        if z.max() < -30:  # every image near-certainly benign: 1 - prod(1 - p_i) = sum p_i to float precision
            return float(special.logsumexp(z))
        log_benign = -float(np.sum(np.logaddexp(0.0, z)))
        return math.log(-math.expm1(log_benign)) - log_benign
    raise LevelError(f"unknown combination rule {rule!r}; choose one of {', '.join(RULES)}")


def level_key(score: ImageScore, level: str) -> str | None:
    """The group of ``score`` at ``level``; None when it lacks what the level needs (an exam, a side).

    Raises:
        LevelError: an unknown level.
    """
    if level == "lesion":
        return score.case_id
    if level == "image":
        return score.image or score.case_id
    if level == "breast":
        return f"{score.exam}_{score.laterality}" if score.exam and score.laterality in LATERALITIES else None
    if level == "exam":
        return score.exam or None
    raise LevelError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")


def _common(values: Sequence[Any]) -> Any:
    distinct = set(values)
    return values[0] if len(distinct) == 1 else None


def aggregate(scores: Sequence[ImageScore], rule: LevelRule,
              unscored_last: bool = False) -> tuple[list[LevelScore], list[str]]:
    """Group ``scores`` at ``rule.level`` and combine each group's scored rows by ``rule``.

    Args:
        scores: the rows.
        rule: the level and its rule.
        unscored_last: give a group without a scored row a score below every scored group
            (evaluate's rule, see the module docstring) instead of none.

    Returns:
        The level's scores in order of each group's first image, and the case ids of the images
        that could not be placed (no exam, or no side at the breast level).
    """
    groups: dict[str, list[ImageScore]] = {}
    left_out = []
    for s in scores:
        key = level_key(s, rule.level)
        if key is None:
            left_out.append(s.case_id)
        else:
            groups.setdefault(key, []).append(s)
    out = []
    for key, members in groups.items():
        scored = [m for m in members if m.log_odds is not None]
        raw, driver = None, None
        if scored:
            z = np.array([m.log_odds for m in scored], dtype=np.float64)
            raw, driver = combine_log_odds(z, rule.rule), scored[int(np.argmax(z))].case_id
        labels = [m.label for m in members]
        fields = {k: v for k in members[0].fields
                  if (v := _common([m.fields.get(k) for m in members])) is not None}
        out.append(LevelScore(
            level=rule.level, id=key, members=tuple(m.case_id for m in members),
            views_present=tuple(sorted({m.view for m in members if m.view})),
            laterality=_common([m.laterality for m in members]), raw=raw,
            log_odds=None if raw is None else rule.slope * raw + rule.bias,
            label=None if any(v is None for v in labels) else int(max(labels)),  # type: ignore[type-var]
            driver=driver, n_images=len({m.image or m.case_id for m in members}),
            n_lesions=sum(m.n_lesions for m in members), fields=fields))
    if unscored_last and any(g.raw is None for g in out):
        floor = unscored_floor([g.raw for g in out if g.raw is not None])
        out = [g if g.raw is not None else replace(g, raw=floor, log_odds=rule.slope * floor + rule.bias)
               for g in out]
    return out, left_out


def default_rule(level: str) -> LevelRule:
    """``max`` without recalibration, at the checkpoint's image threshold (no level validation data)."""
    return LevelRule(level=level, source="default: max of the calibrated log-odds, the image threshold "
                                         "(no validation data with this level's structure)")


def _platt(raw: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, nll)``: Platt scaling of ``raw`` against ``y`` with prior-corrected targets (the
    fit ``breastai calibrate`` uses), and the cross-entropy against those targets."""
    a, b = fit_platt(raw, y, targets="platt")
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    z = a * np.asarray(raw, dtype=np.float64) + b
    return a, b, float(np.mean(np.logaddexp(0.0, z) - t * z))


def fit_level_rule(scores: Sequence[ImageScore], level: str, rules: Sequence[str] = RULES,
                   threshold_method: str = "youden", source: str = "validation data") -> LevelRule:
    """Choose the rule, recalibrate it and pick the threshold at ``level`` on labelled validation images.

    Args:
        scores: validation images with labels and the level's grouping.
        level: the level.
        rules: the candidate rules (one to fix the rule and only recalibrate).
        threshold_method: as :func:`breastai.reporting.metrics.choose_threshold`.
        source: what the data were, for the rule's ``source``.

    Raises:
        LevelError: unlabelled images, images that cannot be grouped, or groups of one class only.
    """
    unlabelled = [s.case_id for s in scores if s.label is None]
    if unlabelled:
        raise LevelError(f"fitting the {level} rule needs labels; {len(unlabelled)} image(s) have none "
                         f"(e.g. {unlabelled[0]})")
    best: tuple[float, int, LevelRule] | None = None
    for order, name in enumerate(rules):
        groups, left_out = aggregate(scores, LevelRule(level=level, rule=name), unscored_last=True)
        if left_out:
            raise LevelError(f"fitting the {level} rule: {len(left_out)} image(s) have no "
                             f"{'exam and side' if level == 'breast' else 'exam'} (e.g. {left_out[0]})")
        y = np.array([g.label for g in groups], dtype=np.int64)
        if y.min() == y.max():
            raise LevelError(f"fitting the {level} rule needs benign and malignant {level}s; all {y.size} are "
                             f"{'malignant' if y[0] else 'benign'}")
        raw = np.array([g.raw for g in groups])
        a, b, loss = _platt(raw, y)
        try:
            t = choose_threshold(y, special.expit(a * raw + b), threshold_method)
        except MetricError as exc:
            raise LevelError(f"fitting the {level} rule: {exc}") from exc
        rule = LevelRule(level=level, rule=name, slope=a, bias=b, threshold=t,
                         source=f"fitted on {source} ({y.size} {level}s, {int(y.sum())} malignant)", n_fit=int(y.size))
        if best is None or (round(loss, 12), order) < (round(best[0], 12), best[1]):
            best = (loss, order, rule)
    if best is None:
        raise LevelError("no candidate rule given")
    return best[2]


def level_rows(groups: Sequence[LevelScore], threshold: float, classes: Sequence[str],
               unscored: str = "") -> list[dict[str, Any]]:
    """Table rows of a level: ``level``, ``id``, ``members`` (``;``-joined), ``n_images``, ``n_lesions``,
    ``views_present``, ``laterality``, ``probability``, ``log_odds``, ``predicted`` (class at
    ``threshold``; ``unscored`` for a group without a score, whose probability and log-odds are
    None), ``truth`` (class or empty) and ``driver``."""
    return [{"level": g.level, "id": g.id, "members": ";".join(g.members), "n_images": g.n_images,
             "n_lesions": g.n_lesions, "views_present": ";".join(g.views_present), "laterality": g.laterality or "",
             "probability": g.probability, "log_odds": g.log_odds,
             "predicted": unscored if g.probability is None else classes[int(g.probability >= threshold)],
             "truth": "" if g.label is None else classes[g.label], "driver": g.driver} for g in groups]
