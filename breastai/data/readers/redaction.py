"""Keeping identifying DICOM header values out of text: file names, paths, ids and messages."""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["redact", "holds_identifier"]


def redact(text: str, values: Sequence[str], placeholder: str = "[redacted]") -> str:
    """``text`` with every (case-insensitive) occurrence of ``values`` replaced by ``placeholder``."""
    for v in values:
        text = re.sub(re.escape(v), placeholder, text, flags=re.IGNORECASE)
    return text


def holds_identifier(text: str, values: Sequence[str]) -> bool:
    """Whether ``text`` contains one of ``values`` even after a file-name sanitiser rewrote its
    punctuation (``prepare folder`` makes ``AB_123`` and ``Doe^Janet`` into ``AB-123`` and ``Doe-Janet``):
    compared on letters and digits only, case-insensitively."""

    def squash(t: str) -> str:
        return re.sub(r"[^0-9a-z]", "", t.lower())

    flat = squash(text)
    return any(len(squash(v)) >= 3 and squash(v) in flat for v in values)
