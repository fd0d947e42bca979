"""The ``breasts.csv`` and ``exams.csv`` writer of a predict run (a :class:`~breastai.inference.writers.Writer`).

When the inputs carry grouping (DICOM: Study Instance UID, hashed, with Image Laterality and View
Position; a datalist: its ``exam`` (or ``group``), ``laterality`` and ``view`` columns), the scored
images are combined per breast and per exam by :mod:`breastai.reporting.levels`: the default rule
(max of the calibrated log-odds, at the checkpoint's image threshold), or a rule fitted on
validation data by ``breastai evaluate --level breast|exam --fit-on VAL`` and given back here
(``rules``). Each row: ``level``, ``id``, ``members`` (the records' ids), ``n_images`` (distinct
images: the lesion records of one image count once), ``n_lesions`` (the scored records: one per
lesion a segmenter found, per mask or box given, per image scored whole), ``views_present``,
``laterality``, ``probability``, ``log_odds``, ``label`` and ``driver`` (the record that drove the
score). Failed inputs are left out of their breast and exam (the row has the images that were
scored). An image where the segmenter found no lesion counts as an image with 0 lesions and no
score: the breast's score is its lesions' alone, and a breast (or exam) where no lesion was found
in any image has ``label`` ``no lesion found`` and no probability, log-odds or driver, never a
probability of 0 posing as a score. Inputs without grouping give no level tables; a rerun without
grouping removes the tables of an earlier run, so they never describe other images than
``predictions.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from breastai.core.files import atomic_write_csv, atomic_write_text
from breastai.core.keys import Keys
from breastai.inference.segment import NO_LESION
from breastai.reporting.levels import ImageScore, LevelRule, aggregate, default_rule, level_rows

__all__ = ["LEVEL_FILES", "LevelTables", "load_level_rule"]

LEVEL_FILES = {"breast": "breasts", "exam": "exams"}
COLUMNS = ["level", "id", "members", "n_images", "n_lesions", "views_present", "laterality", "probability", "log_odds",
           "label", "driver"]


def load_level_rule(path: str | Path) -> LevelRule:
    """A level rule from a JSON file: the ``metrics.json`` of ``evaluate --level L --fit-on VAL`` or a bare rule.

    Raises:
        ValueError: the file is not JSON or holds no rule (named).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"level rule {path}: cannot read it as JSON ({exc})") from exc
    data = data.get("level_rule", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or data.get("level") not in LEVEL_FILES:
        raise ValueError(f"level rule {path}: no breast or exam rule in it (expected the metrics.json of "
                         "'breastai evaluate --level breast|exam --fit-on VAL')")
    return LevelRule.from_dict(data)


class LevelTables:
    """``OUT/breasts.csv``/``.json`` and ``OUT/exams.csv``/``.json`` of a run whose inputs carry grouping.

    Args:
        rules: fitted rules by level (``breast``, ``exam``); a level without one takes
            :func:`breastai.reporting.levels.default_rule`.
    """

    def __init__(self, rules: Mapping[str, LevelRule] | Sequence[LevelRule] = ()) -> None:
        rules = list(rules.values()) if isinstance(rules, Mapping) else list(rules)
        self.rules = {lv: default_rule(lv) for lv in LEVEL_FILES}
        self.rules.update({r.level: r for r in rules})
        self.out: Path | None = None
        self.scores: list[ImageScore] = []

    def start(self, out: Path, run_id: str) -> None:
        self.out, self.scores = out, []

    def write_item(self, index: int, record: dict[str, Any], maps: Any) -> None:
        z = record.get("_calibrated_logit")
        # An image with 0 lesions: unscored, unless whole-image members scored it (its image_probability).
        found_none = record.get("label") == NO_LESION
        if record.get("error") is not None or (z is None and not found_none):
            return
        # ``_image`` is the same for every record of one image (and, resumed, comes back from the journal).
        self.scores.append(ImageScore(
            case_id=str(record["id"]), log_odds=None if z is None else float(z), exam=record.get(Keys.EXAM),
            laterality=record.get(Keys.LATERALITY), view=record.get(Keys.VIEW), image=record.get("_image"),
            n_lesions=0 if found_none else 1))

    def settings(self) -> dict[str, Any]:
        return {"rules": {lv: rule.to_dict() for lv, rule in self.rules.items()}}

    def restore(self, index: int, record: dict[str, Any]) -> None:
        """A record of the interrupted run a resumed run continues: its image joins its breast and exam."""
        self.write_item(index, record, None)

    def finish(self, records: Iterable[dict[str, Any]], run: dict[str, Any]) -> None:
        assert self.out is not None
        grouped = any(s.exam for s in self.scores)
        levels: dict[str, Any] = {}
        for level, stem in LEVEL_FILES.items():
            rule = self.rules[level]
            groups, left_out = aggregate(self.scores, rule)
            if not grouped or not groups:
                for suffix in (".csv", ".json"):  # an earlier run's tables would describe other images
                    (self.out / f"{stem}{suffix}").unlink(missing_ok=True)
                continue
            threshold = run["threshold"] if rule.threshold is None else rule.threshold
            rows = [{**r, "label": r["predicted"]} for r in level_rows(groups, threshold, run["classes"], NO_LESION)]
            levels[level] = {"file": f"{stem}.csv", "n": len(rows),
                             "n_no_lesion": sum(g.log_odds is None for g in groups),
                             "n_images_left_out": _images(self.scores, left_out), "threshold": threshold,
                             "rule": rule.to_dict()}
            atomic_write_text(self.out / f"{stem}.json", json.dumps(
                {"run": run["run_id"], **levels[level], "records": [{k: r[k] for k in COLUMNS} for r in rows]},
                indent=1))
            atomic_write_csv(self.out / f"{stem}.csv", COLUMNS, rows)
        if levels:
            run["levels"] = levels

    def abort(self) -> None:
        pass  # nothing is written before finish


def _images(scores: Sequence[ImageScore], ids: Sequence[str]) -> int:
    """The distinct images of the records ``ids`` (a lesion's image counts once)."""
    chosen = set(ids)
    return len({s.image or s.case_id for s in scores if s.case_id in chosen})
