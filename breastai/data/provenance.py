"""Which images a checkpoint learned from, without storing what could identify them.

A checkpoint keeps short SHA-256 digests of the image FILES (their bytes, not names or paths) of
its training and validation parts. ``breastai evaluate`` compares them with the evaluation
datalist and warns when it scores images the model was trained or selected on: a renamed or
re-listed copy of a training image is caught, and the digests reveal nothing about a patient.

Before any split, :func:`join_identical_images` puts rows whose image files are byte-identical in
one group, so a copy listed under another case id never lands in another part than its original.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from breastai.core.files import file_sha256
from breastai.core.keys import Keys
from breastai.data.datalist import DatalistError
from breastai.data.dedup import union_find_groups

__all__ = ["file_digest", "part_digests", "record_digests", "seen_before", "join_identical_images"]

log = logging.getLogger("breastai")

_DIGEST_HEX = 16  # 64 bits: collisions between different files are negligible at dataset sizes


def file_digest(path: str | Path) -> str | None:
    """The first 16 hex digits of the SHA-256 of a file's bytes; None if it cannot be read."""
    try:
        return file_sha256(path)[:_DIGEST_HEX]
    except OSError:
        return None


def _digests_by_path(records: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    # Frame rows of one multi-frame DICOM share a file: hash each file once.
    return {p: file_digest(p) for p in {str(r["image"]) for r in records if isinstance(r.get("image"), (str, Path))}}


def part_digests(records: Sequence[dict[str, Any]]) -> list[str]:
    """Sorted unique digests of the image files of ``records`` (array inputs are skipped)."""
    return sorted({d for d in _digests_by_path(records).values() if d})


def record_digests(records: Sequence[dict[str, Any]]) -> list[str | None]:
    """The digest of each record's image file, in order (None for an array input or an unreadable file)."""
    by_path = _digests_by_path(records)
    return [by_path.get(str(r.get("image"))) for r in records]


def seen_before(seen_images: Mapping[str, Sequence[str]] | None, records: Sequence[dict[str, Any]]
                ) -> dict[str, int | None]:
    """How many of ``records`` have an image file identical to one of a checkpoint's ``train`` /
    ``val`` images (``seen_images``: its digests by part); None for both when the checkpoint keeps
    no digests (written before they were kept, or trained on arrays), since then nothing can be said."""
    seen = {part: set((seen_images or {}).get(part, [])) for part in ("train", "val")}
    if not (seen["train"] or seen["val"]):
        return {"train": None, "val": None}
    digests = record_digests(records)
    return {part: sum(d is not None and d in known for d in digests) for part, known in seen.items()}


def _datalist_rows(records: Sequence[dict[str, Any]]) -> list[int]:
    """The datalist row of each record, counted from 0: frames 1.. of a multi-frame row (frame policy
    ``all``) continue the row of their frame 0, every other record starts a row of its own."""
    rows: list[int] = []
    for r in records:
        continues = bool(rows) and (r.get(Keys.FRAME) or 0) > 0
        rows.append(rows[-1] if continues else (rows[-1] + 1 if rows else 0))
    return rows


def join_identical_images(records: Sequence[dict[str, Any]], parts: Sequence[Any] | None = None,
                          part_name: str = "part", source: str | Path | None = None) -> list[dict[str, Any]]:
    """``records`` with the groups of rows whose image files are byte-identical joined into one.

    A group never straddles two parts of a split, so a copy of an image listed under another case
    id stays with its original. Each joined group takes the smallest of its group names: the result
    depends on the files and names only, so a resumed run finds the same folds. Frames of one
    multi-frame row share its file by design and count as one row; array inputs have no file and
    are skipped. Every file is hashed once per call (nothing is cached on disk).

    Args:
        records: datalist records in datalist order (as :func:`breastai.data.frames.read_samples`
            gives them).
        parts: the part the user fixed for each record (its ``split`` or ``fold``), or None where
            the splitter chooses the parts.
        part_name: what ``parts`` hold, for messages (``split``, ``fold``).
        source: the datalist, for messages; with it, rows are also named by their number in the file.

    Returns:
        The records in the same order; a record whose group changed is a copy, the rest as given.

    Raises:
        DatalistError: identical images with different labels and the same lesion mask (or none),
            or in two different fixed parts, naming the datalist and both rows.
    """
    by_path = _digests_by_path(records)
    rows = _datalist_rows(records)
    first: dict[int, int] = {}  # datalist row -> its first record
    by_digest: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        d = by_path.get(str(r[Keys.IMAGE])) if isinstance(r.get(Keys.IMAGE), (str, Path)) else None
        if d is not None and first.setdefault(rows[i], i) == i:
            by_digest.setdefault(d, []).append(i)
    sets = [idx for idx in by_digest.values() if len(idx) > 1]
    if not sets:
        return list(records)
    _refuse_conflicts(records, sets, rows, parts, part_name, source)
    names = sorted({str(r[Keys.GROUP]) for r in records})
    number = {g: k for k, g in enumerate(names)}
    component = union_find_groups(len(names), [(number[str(records[a][Keys.GROUP])], number[str(records[b][Keys.GROUP])])
                                               for idx in sets for a, b in zip(idx, idx[1:])])
    name_of: dict[int, str] = {}
    for k, c in enumerate(component):
        name_of.setdefault(c, names[k])  # names are sorted: the smallest name of the joined groups
    log.info("%s: %d rows joined with their byte-identical copies (%d sets of identical image files), "
             "so that each set stays in one part", source or "datalist", sum(map(len, sets)), len(sets))
    out = []
    for r in records:
        g = name_of[component[number[str(r[Keys.GROUP])]]]
        out.append(r if g == str(r[Keys.GROUP]) else {**r, Keys.GROUP: g})
    return out


def _refuse_conflicts(records: Sequence[dict[str, Any]], sets: list[list[int]], rows: list[int],
                      parts: Sequence[Any] | None, part_name: str, source: str | Path | None) -> None:
    """Raise on the first set of identical images whose labels (for the same lesion: identical mask
    files, or none), or fixed parts, differ."""
    first_row = 0 if source is None or Path(source).suffix.lower() == ".json" else 2  # as read_datalist counts

    def row(i: int, what: str) -> str:
        where = f"row {rows[i] + first_row} " if source is not None else ""
        return f"{where}(case {records[i][Keys.CASE_ID]!r}) {what}"

    def lesion(i: int) -> list[str | None]:
        masks = records[i].get(Keys.MASK) or []
        return sorted((file_digest(m) or str(m)) if isinstance(m, (str, Path)) else repr(m) for m in masks)

    conflicts = []
    for idx in sets:
        for a, b in itertools.combinations(idx, 2):
            # Two findings of one film (different masks) may differ in label; one finding may not.
            if records[a][Keys.LABEL] != records[b][Keys.LABEL] and lesion(a) == lesion(b):
                conflicts.append(f"{row(a, f'labelled {records[a][Keys.LABEL]!r}')} and "
                                 f"{row(b, f'labelled {records[b][Keys.LABEL]!r}')} hold identical image files: "
                                 "correct the wrong label or remove one of the rows")
            elif parts is not None and parts[a] != parts[b]:
                conflicts.append(f"{row(a, f'in {part_name} {parts[a]!r}')} and {row(b, f'in {part_name} {parts[b]!r}')}"
                                 " hold identical image files, which cannot be kept in one part: give both the "
                                 f"same {part_name} or remove one of the rows")
            else:
                continue
            break
    if conflicts:
        more = f" (and {len(conflicts) - 1} more such sets)" if len(conflicts) > 1 else ""
        raise DatalistError(f"datalist {source or '(records)'}: {conflicts[0]}{more}")
