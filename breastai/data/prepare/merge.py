"""``breastai prepare merge``: concatenate datalists of several sites into one.

Not a registered :class:`~breastai.data.prepare.registry.Preparer`: a preparer reads one
dataset folder, while merge reads datalists (any number), so :mod:`breastai.cli.prepare` adds it
as its own sub-command beside the registered ones and the preparer contract stays one folder.

Each input is read with :func:`~breastai.data.datalist.read_datalist` (paths resolved against
its own folder) and the result written with :func:`~breastai.data.datalist.write_datalist`
(paths relative to the output's folder), so paths stay valid. Rows are tagged by their input:
the tag is the input's file stem, made unique (``busi``, ``busi-2``) when two inputs share one.

- ``group`` becomes ``<tag>/<group>``: two datalists that both number groups ``g0001`` must not
  join their rows into one group by accident (a site's patients never meet another's).
- ``case_id`` that occurs in more than one input becomes ``<tag>/<case_id>`` in every input
  holding it (the report says how many); unique ones are kept as they are.
- an empty ``site`` is filled with the tag, so every merged row names where it came from.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from breastai.core.keys import Keys
from breastai.data.datalist import read_datalist
from breastai.data.prepare.report import PrepareReport

__all__ = ["merge_datalists"]


def _tags(paths: Sequence[Path]) -> list[str]:
    tags: list[str] = []
    for p in paths:
        tag, k = p.stem, 1
        while tag in tags:
            k += 1
            tag = f"{p.stem}-{k}"
        tags.append(tag)
    return tags


def merge_datalists(inputs: Sequence[str | Path], out: str | Path, check_files: bool = True) -> PrepareReport:
    """Concatenate datalists with groups kept apart per input.

    Args:
        inputs: two or more datalists (``.csv`` or ``.json``).
        out: the merged datalist to write.
        check_files: check that every image and mask file exists while reading.

    Returns:
        The report (dataset ``merge``): rows per label, groups of more than one row, and notes
        on renamed case_ids, filled sites and the rows per input.

    Raises:
        ValueError: fewer than two inputs, or ``out`` is one of them.
        breastai.data.datalist.DatalistError: an input does not read.
    """
    t0 = time.perf_counter()
    paths, out = [Path(p) for p in inputs], Path(out)
    if len(paths) < 2:
        raise ValueError("merge needs at least two datalists")
    if out.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"{out}: the output is one of the inputs; write the merge to a new file")
    tags = _tags(paths)
    # Labels are not checked: a merged list may hold any classes its inputs hold.
    tables = [read_datalist(p, check_files=check_files, require_label=False) for p in paths]
    seen = Counter(cid for recs in tables for cid in {r[Keys.CASE_ID] for r in recs})
    report = PrepareReport("merge")
    rows, renamed, filled = [], 0, 0
    for path, tag, recs in zip(paths, tags, tables):
        for rec in recs:
            row = dict(rec)
            if seen[row[Keys.CASE_ID]] > 1:
                row[Keys.CASE_ID] = f"{tag}/{row[Keys.CASE_ID]}"
                renamed += 1
            row[Keys.GROUP] = f"{tag}/{row[Keys.GROUP]}"
            if not str(row.get(Keys.SITE, "")).strip():
                row[Keys.SITE] = tag
                filled += 1
            row.setdefault(Keys.MODALITY, "")
            rows.append(row)
        report.notes.append(f"{path}: {len(recs)} rows, groups prefixed '{tag}/'")
    if renamed:
        report.notes.append(f"{renamed} rows had a case_id found in more than one input; prefixed with '<input>/'")
    if filled:
        report.notes.append(f"{filled} rows without a site got the input's name as site")
    if any(r[Keys.FOLD] is not None or r[Keys.SPLIT] for r in rows):
        report.notes.append("fold/split columns kept as each input gave them; re-split the merged list if they differ")
    report.count_groups(r[Keys.GROUP] for r in rows)
    return report.write(rows, out, t0, "no rows in the inputs")
