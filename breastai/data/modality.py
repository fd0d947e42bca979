"""The imaging modality of an input (``US``, ``MG``, ...), and the refusal of one a checkpoint never saw.

A checkpoint records the modalities it was trained on (:attr:`Checkpoint.modalities`); predict
refuses a DICOM input of another modality before any model runs, since a breast-ultrasound model
scores a mammogram with a confident-looking probability that means nothing. The modality of a
training image comes from the datalist's ``modality`` column, else its DICOM header, else the
``data.modality`` setting; that of a predict input from its DICOM header only (plain images carry
none, so they are never refused by this rule).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["normalise_modality", "dicom_modality", "record_modality", "trained_modalities", "modality_refusal"]

log = logging.getLogger("breastai")


def normalise_modality(value: Any) -> str | None:
    """A modality code as DICOM writes it (``" us"`` -> ``"US"``); None for nothing or blank."""
    text = "" if value is None else str(value).strip().upper()
    return text or None


def dicom_modality(path: str | Path) -> str | None:
    """The modality a DICOM file's header states, read without its pixels.

    The Modality tag, else what the SOP Class implies (Digital Mammography storage means MG even
    when an export dropped the tag, as three of the real mammograms in shared/data/dicom-mg do);
    None when neither says, or the header cannot be read (the pixel reader reports that itself).
    """
    from breastai.data.readers.dicom_header import (  # the rule read_dicom reports in meta
        modality_and_intent,
        read_header,
    )

    ds = read_header(path)
    if ds is None:  # unreadable files fail later, when decoded, with the reader's message
        return None
    return normalise_modality(modality_and_intent(ds)[0])


def record_modality(rec: Mapping[str, Any], default: str | None = None) -> str | None:
    """The modality of a datalist record: its ``modality`` column, else its DICOM header, else ``default``.

    The header comes before ``default`` (the ``data.modality`` setting) because a DICOM file
    knows its own modality better than a setting meant for datalists without the column.
    """
    given = normalise_modality(rec.get("modality"))
    if given:
        return given
    image = rec.get("image")
    if isinstance(image, (str, Path)):
        from breastai.data.readers.dicom_header import is_dicom

        if is_dicom(image) and Path(image).is_file():
            found = dicom_modality(image)
            if found:
                return found
    return normalise_modality(default)


def trained_modalities(records: Iterable[Mapping[str, Any]], default: str | None = None) -> list[str] | None:
    """Sorted modalities of the training images; None when any one of them is unknown.

    A partial list would refuse inputs of the modality nobody wrote down, so a checkpoint either
    knows the modality of every image it learned from or claims none (and refuses nothing).
    """
    found: set[str] = set()
    unknown = 0
    for rec in records:
        mod = record_modality(rec, default)
        if mod is None:
            unknown += 1
        else:
            found.add(mod)
    if unknown or not found:
        if found:
            log.info("modality unknown for %d training images (no 'modality' column, DICOM header or data.modality): "
                     "the checkpoint records no modalities and refuses no input for its modality", unknown)
        return None
    return sorted(found)


def modality_refusal(source: str, modality: str | None, trained: Sequence[str] | None) -> str | None:
    """The error for an input of a modality the checkpoint was not trained on; None when it may be scored.

    Nothing is refused when either side is unknown (a plain image, a DICOM that states no modality,
    a checkpoint that records none).
    """
    modality = normalise_modality(modality)
    if modality is None or not trained or modality in trained:
        return None
    names = trained[0] if len(trained) == 1 else f"{', '.join(trained[:-1])} and {trained[-1]}"
    only = "" if len(trained) > 1 else " only"
    return (f"{source}: modality {modality}, but this checkpoint was trained on {names} images{only}; "
            "it is not scored")
