"""Which images a checkpoint learned from, without storing what could identify them.

A checkpoint keeps short SHA-256 digests of the image FILES (their bytes, not names or paths) of
its training and validation parts. ``breastai evaluate`` compares them with the evaluation
datalist and warns when it scores images the model was trained or selected on: a renamed or
re-listed copy of a training image is caught, and the digests reveal nothing about a patient.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["file_digest", "part_digests", "seen_before"]

_DIGEST_HEX = 16  # 64 bits: collisions between different files are negligible at dataset sizes


def file_digest(path: str | Path) -> str | None:
    """The first 16 hex digits of the SHA-256 of a file's bytes; None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()[:_DIGEST_HEX]


def _digests_by_path(records: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    # Frame rows of one multi-frame DICOM share a file: hash each file once.
    return {p: file_digest(p) for p in {str(r["image"]) for r in records if isinstance(r.get("image"), (str, Path))}}


def part_digests(records: Sequence[dict[str, Any]]) -> list[str]:
    """Sorted unique digests of the image files of ``records`` (array inputs are skipped)."""
    return sorted({d for d in _digests_by_path(records).values() if d})


def seen_before(seen_images: Mapping[str, Sequence[str]] | None, records: Sequence[dict[str, Any]]
                ) -> dict[str, int | None]:
    """How many of ``records`` have an image file identical to one of a checkpoint's ``train`` /
    ``val`` images (``seen_images``: its digests by part); None for both when the checkpoint keeps
    no digests (written before they were kept, or trained on arrays), since then nothing can be said."""
    seen = {part: set((seen_images or {}).get(part, [])) for part in ("train", "val")}
    if not (seen["train"] or seen["val"]):
        return {"train": None, "val": None}
    by_path = _digests_by_path(records)
    digests = [by_path.get(str(r.get("image"))) for r in records]
    return {part: sum(d is not None and d in known for d in digests) for part, known in seen.items()}
