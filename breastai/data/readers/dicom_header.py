"""DICOM header questions answered without decoding pixels: is it DICOM, who is it (de-identified),
what modality, view and side.

Predict asks these before any pixel is read (a file that fails to decode is named as safely as one
that decodes); they share one cached header read (:func:`read_header`). Decoding is
:mod:`breastai.data.readers.dicom`.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

__all__ = ["DICOM_SUFFIXES", "read_header", "identifying_values", "private_identity", "is_dicom", "modality_and_intent",
           "view_position", "image_laterality", "uid_hash"]

DICOM_SUFFIXES = {".dcm", ".dicom"}
# SOP classes that tell modality and intent when the Modality tag is absent.
_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2": ("MG", "FOR PRESENTATION"),
    "1.2.840.10008.5.1.4.1.1.1.2.1": ("MG", "FOR PROCESSING"),
    "1.2.840.10008.5.1.4.1.1.1.1": ("DX", "FOR PRESENTATION"),
    "1.2.840.10008.5.1.4.1.1.1.1.1": ("DX", "FOR PROCESSING"),
    "1.2.840.10008.5.1.4.1.1.13.1.3": ("MG", None),  # breast tomosynthesis
    "1.2.840.10008.5.1.4.1.1.13.1.4": ("MG", "FOR PRESENTATION"),  # BT projection
    "1.2.840.10008.5.1.4.1.1.13.1.5": ("MG", "FOR PROCESSING"),
    "1.2.840.10008.5.1.4.1.1.6.1": ("US", None),
    "1.2.840.10008.5.1.4.1.1.3.1": ("US", None),
}
_VIEW_MEANINGS = {
    "cranio-caudal": "CC",
    "medio-lateral oblique": "MLO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "latero-medial oblique": "LMO",
    "cranio-caudal exaggerated laterally": "XCCL",
    "cranio-caudal exaggerated medially": "XCCM",
    "caudo-cranial (from below)": "FB",
    "superolateral to inferomedial oblique": "SIO",
    "cleavage": "CV",
    "axillary tail": "AT",
}


def uid_hash(value: Any) -> str | None:
    """First 16 hex digits of the sha256 of a UID string (None for a missing UID)."""
    if value in (None, ""):
        return None
    return hashlib.sha256(str(value).strip().encode()).hexdigest()[:16]


# Header values that name or number the patient, the visit or the image; a path or message holding
# one of them would carry it into outputs. The instance UIDs count: PACS exports often name files
# and folders by them, and a UID links an output back to the exam as surely as a patient ID (the
# DICOM de-identification profile, PS3.15 E.1, replaces them too).
_IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "PatientBirthDate",
                "AccessionNumber", "StudyID", "ReferringPhysicianName", "InstitutionName", "OperatorsName",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def read_header(path: str | Path) -> Dataset | None:
    """The header of a DICOM file (pixel data not read), or None when it cannot be parsed.

    Predict asks one file's header several questions before it decodes the pixels (its identity,
    its modality, its exam and side); they share one read: the result is cached per file path,
    size and modification time, so a file rewritten in place is read again. Callers must not
    change the dataset.
    """
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _cached_header(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_header(path: str, size: int, mtime_ns: int) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - unreadable headers give None; the pixel reader names the file and why
        return None


def private_identity(path: str | Path) -> tuple[list[str], str | None]:
    """What naming a DICOM file safely needs, from one header-only read.

    Returns:
        ``(identifying_values(path), uid_hash(SOPInstanceUID))``; ``([], None)`` for an
        unreadable header.
    """
    ds = read_header(path)
    if ds is None:  # the pixel reader reports unreadable files itself
        return [], None
    return _identifying(ds), uid_hash(ds.get("SOPInstanceUID"))


def identifying_values(path: str | Path) -> list[str]:
    """Patient-, visit- and instance-identifying header values of a DICOM file (name parts split at ``^``).

    Values shorter than 3 characters are left out (they would match everywhere). Longest first,
    so :func:`redact` replaces ``Doe^Janet`` before ``Doe``. An unreadable header gives ``[]``.
    """
    return private_identity(path)[0]


def _identifying(ds: Dataset) -> list[str]:
    out: set[str] = set()
    for tag in _IDENTIFYING:
        value = ds.get(tag)
        values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        for v in values:
            text = str(v or "").strip()
            for part in {text, *text.replace("=", "^").split("^")}:
                if len(part.strip()) >= 3:
                    out.add(part.strip())
    return sorted(out, key=lambda v: (-len(v), v))


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` suffix or a ``DICM`` magic at byte 128."""
    path = Path(path)
    if not path.is_file():  # a FIFO or device: any reader would block on it forever (load_image names it)
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def modality_and_intent(ds: Dataset) -> tuple[str | None, str | None]:
    sop_mod, sop_intent = _SOP_CLASSES.get(str(ds.get("SOPClassUID", "")), (None, None))
    modality = str(ds.get("Modality", "") or "").upper() or sop_mod
    intent = str(ds.get("PresentationIntentType", "") or "").upper() or sop_intent
    return modality, intent


def view_position(ds: Dataset) -> str | None:
    """View Position (``CC``, ``MLO``, ...), else the view named by the View Code Sequence, else None."""
    vp = str(ds.get("ViewPosition", "") or "").strip().upper()
    if vp:
        return vp
    for item in ds.get("ViewCodeSequence") or []:
        meaning = str(item.get("CodeMeaning", "")).strip().lower()
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
    return None


def image_laterality(ds: Dataset, extra: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(L|R|B, the tag it came from)`` from Image Laterality, Laterality or ``extra``'s Frame
    Laterality, in that order; ``(None, None)`` when none holds one of those values."""
    for key in ("ImageLaterality", "Laterality", "FrameLaterality"):
        v = extra.get(key) if key == "FrameLaterality" else ds.get(key)
        v = str(v or "").strip().upper()
        if v in ("L", "R", "B"):
            return v, key
    return None, None
