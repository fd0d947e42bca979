"""BrEaST-Lesions_USG breast ultrasound (Pawłowska et al., Sci Data 2024): one row per image.

Layout (the TCIA release): ``<root>/clinical.csv`` and ``<root>/images/caseNNN.png`` with the
lesion mask ``caseNNN_tumor.png`` and, for some cases, masks of *other* findings
``caseNNN_otherK.png`` (cysts, lymph nodes beside the lesion). Only the tumour mask is the
lesion the label describes, so only it becomes ``mask``; the other-finding masks are left out.

The label is the ``Classification`` column (``benign``, ``malignant``, ``normal``), mapped
explicitly by :data:`LABELS`. The release has one image per patient, so the group is the case.

``Pixel_size`` is in **centimetres** per pixel and is written as ``pixel_size_mm`` (x 10). The
column has no unit; the evidence, measured on the 256 images of the release:

- image width x Pixel_size is 3.8 to 8.9 (median 4.7): read as cm, a 38-89 mm (median 47 mm)
  field of view, the footprint of a linear breast transducer (about 40-50 mm, wider with
  extended views); read as mm it would be under 1 cm, too small for any probe;
- the longest extent of the tumour masks x Pixel_size x 10 is 3 to 57 mm (median 13 mm), the
  size range of breast lesions referred for biopsy or follow-up.

A value outside :data:`PLAUSIBLE_MM` after conversion is written but noted in the report.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from breastai.data.prepare.registry import Option, Preparer, register_preparer
from breastai.data.prepare.report import PrepareReport

__all__ = ["SITE", "LABELS", "VERIFICATION", "PLAUSIBLE_MM", "prepare_breast_lesions_usg"]

SITE = "breast-lesions-usg"
# Classification -> datalist label; any other value is dropped and reported, never guessed.
LABELS = {"benign": "benign", "malignant": "malignant", "normal": "normal"}
# Verification -> short token; an unknown value is kept verbatim and noted.
VERIFICATION = {"confirmed by biopsy": "biopsy", "confirmed by follow-up care": "follow-up", "not applicable": ""}
CM_TO_MM = 10.0
PLAUSIBLE_MM = (0.02, 0.5)  # ultrasound pixel spacings in mm; outside it the unit is suspect


def _spacing_mm(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value * CM_TO_MM if value > 0 else None


def prepare_breast_lesions_usg(root: str | Path, out: str | Path, include_normal: bool = False) -> PrepareReport:
    """Datalist of BrEaST-Lesions_USG: one row per image with its tumour mask.

    Args:
        root: folder holding ``clinical.csv`` and ``images/``.
        out: datalist to write (``.csv`` or ``.json``).
        include_normal: also list ``normal`` images (label ``normal``, empty mask); otherwise
            they are dropped and reported.

    Returns:
        The report. ``case_id`` is the image stem (``case001``), ``group`` the same (one image
        per patient); extra columns ``site`` (``breast-lesions-usg``), ``modality`` (``US``),
        ``pixel_size_mm``, ``birads`` (as in the sheet, e.g. ``4a``) and ``verification``
        (``biopsy``, ``follow-up`` or empty, see :data:`VERIFICATION`).

    Raises:
        FileNotFoundError: no ``clinical.csv`` in ``root``.
        ValueError: the sheet lacks a needed column, or no row is left to write.
    """
    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    sheet = root / "clinical.csv"
    if not sheet.is_file():
        raise FileNotFoundError(f"{root}: no clinical.csv (expected the BrEaST-Lesions_USG layout)")
    images = root / "images" if (root / "images").is_dir() else root
    with open(sheet, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        table = list(reader)
        columns = set(reader.fieldnames or [])
    need = {"CaseID", "Image_filename", "Mask_tumor_filename", "Pixel_size", "BIRADS", "Verification", "Classification"}
    if need - columns:
        raise ValueError(f"{sheet}: missing column(s) {', '.join(sorted(need - columns))}")
    report = PrepareReport(SITE)
    rows = []
    odd_spacing, odd_verification = [], set()
    for rec in table:
        name = rec["Image_filename"].strip()
        case_id = Path(name).stem or f"case{rec['CaseID'].strip()}"
        raw = rec["Classification"].strip().lower()
        label = LABELS.get(raw)
        if label is None:
            report.dropped.append((case_id, f"Classification {rec['Classification']!r} is not benign/malignant/normal"))
            continue
        if label == "normal" and not include_normal:
            report.dropped.append((case_id, "normal (use --include-normal)"))
            continue
        # The sheet joins several files with '&' (Mask_other_filename does); read the tumour column the same way.
        masks = [images / m.strip() for m in rec["Mask_tumor_filename"].split("&") if m.strip()]
        if label != "normal" and not masks:
            report.dropped.append((case_id, "benign/malignant without a tumour mask"))
            continue
        missing = [p for p in [images / name, *masks] if not p.is_file()]
        if missing:
            report.dropped.append((case_id, "image or mask file missing"))
            continue
        spacing = _spacing_mm(rec["Pixel_size"].strip())
        if spacing is None or not PLAUSIBLE_MM[0] <= spacing <= PLAUSIBLE_MM[1]:
            odd_spacing.append(case_id)
        verification = rec["Verification"].strip()
        if verification.lower() not in VERIFICATION:
            odd_verification.add(verification)
        rows.append(
            {
                "case_id": case_id,
                "image": str(images / name),
                "mask": [str(m) for m in masks],
                "label": label,
                "group": case_id,
                "site": SITE,
                "modality": "US",
                "pixel_size_mm": "" if spacing is None else f"{spacing:.6g}",
                "birads": rec["BIRADS"].strip(),
                "verification": VERIFICATION.get(verification.lower(), verification),
            }
        )
    if odd_spacing:
        report.notes.append(
            f"{len(odd_spacing)} rows with Pixel_size missing or outside {PLAUSIBLE_MM} mm after cm->mm: "
            + ", ".join(odd_spacing[:8])
        )
    if odd_verification:
        report.notes.append(f"Verification values kept verbatim (not in the known list): {sorted(odd_verification)}")
    report.notes.append("pixel_size_mm = Pixel_size (cm per pixel) x 10; other-finding masks left out")
    report.count_groups(r["group"] for r in rows)
    return report.write(rows, out, t0, f"{sheet}: no row left to write")


register_preparer(
    Preparer(
        name="breast-lesions-usg",
        run=prepare_breast_lesions_usg,
        help="BrEaST-Lesions_USG breast ultrasound (clinical.csv + images/)",
        description="One row per image with its tumour mask (other-finding masks are not the lesion); "
        "label from Classification; pixel_size_mm from Pixel_size (cm per pixel); BI-RADS and the "
        "verification method as extra columns; one image per patient, so the group is the case.",
        root_help="folder holding clinical.csv and images/",
        options=(Option("include_normal", "also list normal images (label 'normal', empty mask)", switch=True),),
    )
)
