"""Datalists: one row per lesion or image, as CSV or MONAI-style JSON.

Columns (CSV) or keys (JSON):

- ``image``: path to the image (relative paths resolve against the datalist's folder).
- ``mask``: optional; several files separated by ``;`` mean their union.
- ``label``: class name, e.g. ``benign`` / ``malignant``.
- ``group``: patient or duplicate group; a group never straddles two folds.
- ``fold`` (int) or ``split`` (``train``/``val``/``test``): optional fixed partition.
- ``case_id``: optional; defaults to the image file name without suffix.
- ``site``, ``modality``: optional (:data:`SITE_FIELDS`); the dataset the row comes from and its
  modality (``US``, ``MG``), written by every ``breastai prepare`` preparer. Datalists without
  them read as before.
- ``exam``, ``laterality`` (``L``, ``R``, ``B``), ``view``: optional (:data:`GROUPING_FIELDS`); the
  exam, breast and view of the image, for breast- and exam-level scores
  (:mod:`breastai.data.grouping`). ``laterality`` is upper-cased; another value is an error.

Any further column is kept as a string in the record. The column names are the sample keys of
:class:`breastai.core.keys.Keys`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from breastai.core.files import atomic_write_text
from breastai.core.keys import Keys

__all__ = ["DatalistError", "read_datalist", "write_datalist", "FIELDS", "SITE_FIELDS", "GROUPING_FIELDS"]

FIELDS = [Keys.CASE_ID, Keys.IMAGE, Keys.MASK, Keys.LABEL, Keys.GROUP, Keys.FOLD, Keys.SPLIT]
# Optional columns read and kept as strings like any extra column (so older datalists without
# them still read), but written first among the extras so merged datalists line up.
SITE_FIELDS = [Keys.SITE, Keys.MODALITY]
GROUPING_FIELDS = [Keys.EXAM, Keys.LATERALITY, Keys.VIEW]
_LATERALITIES = {"L", "R", "B", ""}
_SPLITS = {"train", "val", "test", ""}


class DatalistError(ValueError):
    """A datalist row is unusable; the message names the file and the row."""


def _raw_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a datalist with the number an error names them by.

    CSV rows are numbered by their line (the header is line 1), JSON rows from 0 in file order.
    Both are read as UTF-8 without the byte-order mark that spreadsheet programs write ("CSV
    UTF-8"), which would otherwise be part of the first column's name.

    Raises:
        DatalistError: a CSV row with more fields than the header names columns (a path with an
            unquoted comma in it would otherwise lose its tail silently).
    """
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if isinstance(data, list):
            return list(enumerate(data))
        rows: list[dict[str, Any]] = []
        # MONAI decathlon-style sections map onto the split column.
        for section, split in (("data", None), ("training", None), ("validation", "val"), ("test", "test")):
            for row in data.get(section, []):
                row = dict(row)
                if split and not row.get(Keys.SPLIT):
                    row[Keys.SPLIT] = split
                rows.append(row)
        return list(enumerate(rows))
    numbered = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            extra = row.pop(None, None)  # DictReader's key for the fields past the header's
            if extra is not None:
                raise DatalistError(
                    f"datalist {path}, row {reader.line_num}: {len(reader.fieldnames) + len(extra)} fields but the "
                    f"header names {len(reader.fieldnames)} columns (extra: {', '.join(map(repr, extra))}); "
                    "quote a value that holds a comma"
                )
            numbered.append((reader.line_num, row))
    return numbered


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def read_datalist(
    path: str | Path,
    classes: Sequence[str] | None = None,
    check_files: bool = True,
    require_label: bool = True,
) -> list[dict[str, Any]]:
    """Read and validate a datalist.

    Args:
        path: CSV or JSON file.
        classes: allowed class names; a row with another label is an error.
        check_files: check that every image and mask file exists.
        require_label: whether an empty label is an error (inference lists may omit it).

    Returns:
        Records with ``image`` (absolute path), ``mask`` (list of absolute paths, possibly
        empty), ``label``, ``group``, ``fold`` (int or None), ``split``, ``case_id`` and any
        extra columns.

    Raises:
        DatalistError: naming the datalist, the row number and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DatalistError(f"datalist {path}: file not found")
    base = path.parent.resolve()
    try:
        raw = _raw_rows(path)
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise DatalistError(f"datalist {path}: cannot parse ({exc})") from exc
    if not raw:
        raise DatalistError(f"datalist {path}: no rows")
    records = []
    seen_ids: set[str] = set()
    for i, row in raw:
        where = f"datalist {path}, row {i}"
        row = {k.strip(): ("" if v is None else v) for k, v in row.items()}
        image = str(row.get(Keys.IMAGE, "")).strip()
        if not image:
            raise DatalistError(f"{where}: empty 'image'")
        rec: dict[str, Any] = {k: v for k, v in row.items() if k not in FIELDS}
        rec[Keys.IMAGE] = _resolve(base, image)
        masks = row.get(Keys.MASK, "")
        if isinstance(masks, str):
            masks = [m.strip() for m in masks.split(";") if m.strip()]
        rec[Keys.MASK] = [_resolve(base, m) for m in masks]
        rec[Keys.LABEL] = str(row.get(Keys.LABEL, "")).strip()
        if require_label and not rec[Keys.LABEL]:
            raise DatalistError(f"{where}: empty 'label'")
        if classes is not None and rec[Keys.LABEL] and rec[Keys.LABEL] not in classes:
            raise DatalistError(f"{where}: unknown label {rec['label']!r} (expected one of {list(classes)})")
        rec[Keys.CASE_ID] = str(row.get(Keys.CASE_ID, "")).strip() or Path(image).stem
        if rec[Keys.CASE_ID] in seen_ids:
            raise DatalistError(f"{where}: duplicate case_id {rec['case_id']!r}")
        seen_ids.add(rec[Keys.CASE_ID])
        rec[Keys.GROUP] = str(row.get(Keys.GROUP, "")).strip() or rec[Keys.CASE_ID]
        fold = str(row.get(Keys.FOLD, "")).strip()
        try:
            rec[Keys.FOLD] = int(fold) if fold else None
        except ValueError:
            raise DatalistError(f"{where}: 'fold' must be an integer, got {fold!r}") from None
        rec[Keys.SPLIT] = str(row.get(Keys.SPLIT, "")).strip().lower()
        if rec[Keys.SPLIT] not in _SPLITS:
            raise DatalistError(f"{where}: 'split' must be train, val or test, got {rec['split']!r}")
        if Keys.LATERALITY in rec:
            rec[Keys.LATERALITY] = str(rec[Keys.LATERALITY]).strip().upper()
            if rec[Keys.LATERALITY] not in _LATERALITIES:
                raise DatalistError(f"{where}: 'laterality' must be L, R, B or empty, got {row[Keys.LATERALITY]!r}")
        if check_files:
            for f in [rec[Keys.IMAGE], *rec[Keys.MASK]]:
                if not Path(f).is_file():
                    problem = "not a regular file (a folder, FIFO or device)" if Path(f).exists() else "file not found"
                    raise DatalistError(f"{where}: {problem}: {f}")
        records.append(rec)
    return records


def write_datalist(rows: Iterable[dict[str, Any]], path: str | Path, relative: bool = True) -> Path:
    """Write records as CSV or JSON (by suffix), atomically.

    Args:
        rows: records as returned by :func:`read_datalist` or built by ``prepare``; ``mask``
            may be a list of paths or a ``;``-joined string.
        path: output ``.csv`` or ``.json``.
        relative: store paths relative to the output folder where possible, so the
            datalist and its data can move together.

    Returns:
        The path written.
    """
    path = Path(path)
    base = path.parent.resolve()

    def rel(p: str) -> str:
        if not relative:
            return str(p)
        try:
            return os.path.relpath(Path(p).resolve(), base)
        except ValueError:  # other drive on Windows
            return str(p)

    out = []
    extra: list[str] = []
    for r in rows:
        r = dict(r)
        masks = r.get(Keys.MASK) or []
        if isinstance(masks, str):
            masks = [m for m in masks.split(";") if m]
        r[Keys.IMAGE] = rel(r[Keys.IMAGE])
        r[Keys.MASK] = ";".join(rel(m) for m in masks)
        r[Keys.FOLD] = "" if r.get(Keys.FOLD) is None else r[Keys.FOLD]
        for k in r:
            if k not in FIELDS and k not in extra:
                extra.append(k)
        out.append(r)
    first = SITE_FIELDS + GROUPING_FIELDS
    extra = [k for k in first if k in extra] + [k for k in extra if k not in first]
    fields = FIELDS + extra
    if path.suffix.lower() == ".json":
        text = json.dumps({"data": [{k: r.get(k, "") for k in fields} for r in out]}, indent=1)
    else:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in out:
            w.writerow({k: r.get(k, "") for k in fields})
        text = buf.getvalue()
    atomic_write_text(path, text)
    return path
