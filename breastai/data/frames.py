"""Multi-frame DICOM (ultrasound cine, tomosynthesis) in datalists: the frame policy.

``data.reader_options.dicom.frame`` chooses it: ``middle`` (default) or an index reads one frame
per row; ``all`` expands every multi-frame row into one sample per frame, all in the row's group
(frames of one acquisition never straddle a split). ``stack`` is a reading mode of
:func:`breastai.data.dicom.read_dicom` only: the 2D classifiers take one frame per sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from breastai.core.keys import Keys

__all__ = ["expand_frames", "read_samples"]


def read_samples(datalist: str | Path, data_cfg: dict[str, Any], classes: Sequence[str] | None = None,
                 require_label: bool = True) -> list[dict[str, Any]]:
    """The samples of a datalist as training, evaluation and the benchmarks see them.

    :func:`breastai.data.datalist.read_datalist` with ``data_cfg['classes']`` (or ``classes``),
    then the frame policy of ``data_cfg['reader_options']``. With ``require_label=False`` (only
    where no label is read, as ``breastai adapt``) a missing or empty ``label`` is allowed; a
    label that is given must still be one of the classes.
    """
    from breastai.data.datalist import read_datalist

    rows = read_datalist(datalist, classes=list(classes if classes is not None else data_cfg["classes"]),
                         require_label=require_label)
    return expand_frames(rows, data_cfg.get("reader_options"))


def expand_frames(records: Sequence[dict[str, Any]], reader_options: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Apply the frame policy to datalist records.

    Returns the records unchanged unless the policy is ``all``; then each DICOM row with F > 1
    frames becomes F rows with ``frame`` = 0..F-1 and ``case_id`` suffixed ``_fK``.

    Raises:
        ValueError: the ``stack`` policy, which yields a volume rather than a 2D image.
    """
    policy = ((reader_options or {}).get("dicom") or {}).get("frame", "middle")
    if policy == "stack":
        raise ValueError("data.reader_options.dicom.frame=stack gives a frame stack; the 2D models need "
                         "'middle', a frame index, or 'all' (one sample per frame)")
    if policy != "all":
        return list(records)
    from breastai.data.readers.dicom import dicom_frame_count, is_dicom

    out: list[dict[str, Any]] = []
    for r in records:
        dcm = is_dicom(Path(r[Keys.IMAGE]))
        n = dicom_frame_count(r[Keys.IMAGE]) if dcm else 1
        if n <= 1:
            out.append({**r, Keys.FRAME: 0} if dcm else dict(r))
            continue
        out.extend({**r, Keys.FRAME: k, Keys.CASE_ID: f"{r[Keys.CASE_ID]}_f{k}"} for k in range(n))
    return out
