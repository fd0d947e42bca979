"""Where an image belongs (exam, breast, view) and its subgroup values, from a datalist row or a DICOM header.

One place for ``evaluate`` and cross-validation (engine) and ``predict`` (inference), which share no
imports. A datalist's own columns win; a DICOM image fills what its row leaves empty from its header,
reading only the elements named in :data:`DICOM_FIELDS` (never the pixels):

- exam: the ``exam`` column, else a ``group`` the datalist gave (a group equal to the row's
  ``case_id`` is the default, not a grouping); DICOM: the hash of the Study Instance UID
  (:func:`breastai.data.readers.dicom_header.uid_hash`), so no UID reaches an output.
- laterality, view: the ``laterality`` and ``view`` columns; DICOM: Image Laterality (else
  Laterality) and View Position (else the View Code Sequence).

Subgroup columns (``evaluate --by``) are datalist columns, or for DICOM images ``Manufacturer``,
``ManufacturerModelName``, ``ViewPosition``, ``Laterality`` and ``age_band``: the band of Patient
Age (:data:`AGE_BANDS`); the age itself is never returned.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from breastai.core.keys import Keys

__all__ = ["DICOM_FIELDS", "AGE_BANDS", "age_band", "exam_of", "dicom_header_fields", "grouping_of",
           "subgroup_columns"]

# subgroup name -> the header elements it is read from
DICOM_FIELDS = {
    "Manufacturer": ("Manufacturer",),
    "ManufacturerModelName": ("ManufacturerModelName",),
    "ViewPosition": ("ViewPosition", "ViewCodeSequence"),
    "Laterality": ("ImageLaterality", "Laterality"),
    "age_band": ("PatientAge",),
}
AGE_BANDS = ((40, "<40"), (50, "40-49"), (60, "50-59"), (70, "60-69"), (None, ">=70"))
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY])\s*$", re.IGNORECASE)
_YEARS_PER = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def age_band(patient_age: Any) -> str:
    """The band of a DICOM Age String (``052Y``, ``555M``, ``012W``, ``100D``), or ``""`` when unreadable."""
    m = _AGE.match(str(patient_age or ""))
    if not m:
        return ""
    years = float(m.group(1)) * _YEARS_PER[m.group(2).upper()]
    return next(name for limit, name in AGE_BANDS if limit is None or years < limit)


def exam_of(record: Mapping[str, Any]) -> str | None:
    """The exam key a datalist record gives (``exam``, else a ``group`` other than its ``case_id``), or None."""
    exam = str(record.get(Keys.EXAM) or "").strip()
    if exam:
        return exam
    group = str(record.get(Keys.GROUP) or "").strip()
    return group if group and group != str(record.get(Keys.CASE_ID, "")) else None


def _is_dicom(path: Any) -> bool:
    from breastai.data.readers.dicom_header import is_dicom

    return isinstance(path, (str, Path)) and is_dicom(path)


def dicom_header_fields(path: str | Path, names: Sequence[str]) -> dict[str, str]:
    """The subgroup values ``names`` (keys of :data:`DICOM_FIELDS`) of a DICOM file, ``""`` where absent."""
    from breastai.data.readers.dicom_header import (
        image_laterality,
        read_header,
        view_position,
    )

    unknown = [n for n in names if n not in DICOM_FIELDS]
    if unknown:
        raise ValueError(f"unknown DICOM subgroup field(s) {unknown}; choose from {', '.join(DICOM_FIELDS)}")
    ds = read_header(path)
    if ds is None:
        return {n: "" for n in names}
    out = {}
    for n in names:
        if n == "ViewPosition":
            out[n] = view_position(ds) or ""
        elif n == "Laterality":
            out[n] = image_laterality(ds, {})[0] or ""
        elif n == "age_band":
            out[n] = age_band(ds.get("PatientAge"))
        else:
            out[n] = str(ds.get(n, "") or "").strip()
    return out


def grouping_of(record: Mapping[str, Any]) -> dict[str, str | None]:
    """``{exam, laterality, view}`` of a datalist record (or predict item as a dict with ``image``);
    a DICOM image fills the empty ones from its header (see the module docstring)."""
    out = {Keys.EXAM: exam_of(record),
           Keys.LATERALITY: str(record.get(Keys.LATERALITY) or "").strip().upper() or None,
           Keys.VIEW: str(record.get(Keys.VIEW) or "").strip().upper() or None}
    if all(out.values()) or not _is_dicom(record.get(Keys.IMAGE)):
        return out
    from breastai.data.readers.dicom_header import (
        image_laterality,
        read_header,
        uid_hash,
        view_position,
    )

    ds = read_header(record[Keys.IMAGE])
    if ds is not None:
        out[Keys.EXAM] = out[Keys.EXAM] or uid_hash(ds.get("StudyInstanceUID"))
        out[Keys.LATERALITY] = out[Keys.LATERALITY] or image_laterality(ds, {})[0]
        out[Keys.VIEW] = out[Keys.VIEW] or view_position(ds)
    return out


def subgroup_columns(records: Sequence[Mapping[str, Any]], names: Sequence[str],
                     where: str = "the datalist") -> dict[str, list[str]]:
    """``{name: one value per record}``: a record's own column, else (DICOM images) its header field.

    Raises:
        ValueError: a name that is neither a column of every record nor, for the DICOM rows, a
            :data:`DICOM_FIELDS` name (the message names ``where`` and the first such row).
    """
    out: dict[str, list[str]] = {n: [] for n in names}
    for r in records:
        missing = [n for n in names if n not in r]
        header = {}
        if missing:
            bad = [n for n in missing if n not in DICOM_FIELDS or not _is_dicom(r.get(Keys.IMAGE))]
            if bad:
                raise ValueError(f"{where}: no column {bad[0]!r} for case_id {r.get(Keys.CASE_ID)} (columns: "
                                 f"{', '.join(sorted(k for k in r if not k.startswith('_')))}; DICOM images also "
                                 f"give {', '.join(DICOM_FIELDS)})")
            header = dicom_header_fields(r[Keys.IMAGE], missing)
        for n in names:
            out[n].append(str(r[n]) if n in r else header[n])
    return out
