"""The load stage of predict: everything an input needs before a network runs, ahead of it.

For each input the load stage decides its identity (id, redacted source, the identifying header
values to redact from its messages), its exam grouping and whether its modality is refused, then
decodes it (once per distinct reader setting) and, where its mask is already known (given, or no
mask provider or segmenter could add one), preprocesses it with every model's preset. The rest
(mask providers, the segmenter, the networks, the records) runs in the main process
(:meth:`breastai.inference.predictor.Predictor.iter_inputs`).

With ``workers`` > 0 the load stage runs in that many ``torch.utils.data.DataLoader`` worker
processes (forked, one torch thread each) while the main process runs the networks, inputs in
order. The results are the same as with ``workers=0``: the same code computes them, and a value
computed ahead of its use keeps the error it met (:class:`Outcome`), raised where the input's code
would have raised it, so an input fails with the same message either way.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from breastai.data.readers.registry import ImageReadError, frame_options, load_image
from breastai.inference.inputs import PredictItem
from breastai.models.checkpoint import CheckpointError
from breastai.models.outliner import Outliner

__all__ = ["Loaded", "Outcome", "StagedError", "attempt", "failure_message", "decode_item", "identity", "grouping",
           "identifiers", "image_key", "loaded_inputs", "refused_modality"]


class StagedError(ImageReadError):
    """An error met ahead of its use (in the load stage); its message is already the record's."""


def failure_message(exc: BaseException) -> str:
    """What a failed input's record says of ``exc``: the message of a reader or checkpoint error (and of
    one met ahead), else the exception's type and message."""
    return str(exc) if isinstance(exc, (ImageReadError, CheckpointError)) else f"{type(exc).__name__}: {exc}"


@dataclass
class Outcome:
    """A value computed ahead of its use, or the message of the error computing it met.

    Only the message travels (from a worker process), so any exception can be carried.
    """

    value: Any = None
    error: str | None = None

    def get(self) -> Any:
        """The value, or the error, raised now as :class:`StagedError`."""
        if self.error is not None:
            raise StagedError(self.error)
        return self.value


def attempt(fn: Callable[..., Any], *args: Any) -> Outcome:
    """``fn(*args)`` as an :class:`Outcome`."""
    try:
        return Outcome(fn(*args))
    except Exception as exc:  # kept for where the input's code would meet it
        return Outcome(error=failure_message(exc))


@dataclass
class Loaded:
    """One input after the load stage.

    Attributes:
        position: the input's place among the run's inputs.
        item: the input.
        record: its record so far (identity, grouping; the error when ``final``).
        secrets: identifying header values to redact from its messages.
        final: the record is complete (refused or failed): nothing is left to run.
        decoded: the decodes, by reader setting (:func:`breastai.inference.ensemble.reader_key`).
        inputs: each model's preprocessed input (the predictor's members in order), or None when the
            mask was not known yet (a mask provider or the segmenter may outline the input).
    """

    position: int
    item: PredictItem
    record: dict[str, Any]
    secrets: list[str] = field(default_factory=list)
    final: bool = False
    decoded: dict[str, Outcome] = field(default_factory=dict)
    inputs: list[Outcome] | None = None


def decode_item(item: PredictItem, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The item's image as a reader with ``options`` reads it (one frame of a multi-frame DICOM)."""
    if isinstance(item.image, np.ndarray):
        return item.image, {"reader": "array"}
    return load_image(item.image, frame_options(options, item.frame))


def refused_modality(item: PredictItem, source: str, members: Sequence[Sequence[str] | None],
                     segmenter: Outliner | None = None) -> str | None:
    """Why a DICOM input of a modality the checkpoint never saw is not scored (None: it is).

    Read from the header alone. Every member of an ensemble must know the modality: the
    ensemble's score is a weighted sum of every member's, so one member scoring an image
    unlike any it learned from spoils it. The segmenter, when there is one, must know it too.

    Args:
        item: the input.
        source: how messages name it (redacted).
        members: each model's trained modalities (one, or an ensemble's members'; None or empty: unknown).
        segmenter: the predictor's segmenter, or None.
    """
    trained = [*members, *([segmenter.modalities] if segmenter is not None else [])]
    if not any(trained) or isinstance(item.image, np.ndarray):
        return None
    from breastai.data.modality import dicom_modality, modality_refusal
    from breastai.data.readers.dicom_header import is_dicom

    path = Path(item.image)
    if not (is_dicom(path) and path.is_file()):
        return None
    modality = dicom_modality(path)
    for i, mods in enumerate(trained):
        why = modality_refusal(source, modality, mods)
        if why is not None and segmenter is not None and i == len(trained) - 1:
            return why.replace("this checkpoint", "the segmenter")
        if why is not None:
            return why if len(members) == 1 else why.replace("this checkpoint", f"ensemble member {i + 1}")
    return None


def identity(item: PredictItem, keep: bool, index: int) -> tuple[dict[str, Any], list[str]]:
    """``id`` and ``source`` of an input and the header values to redact from its messages.

    Decided before the pixels are read, so that a DICOM file that then fails to load is named as
    safely as one that loads: its id is the hash of its SOP Instance UID, and its path and errors
    lose every identifying header value (folder and file names exported from PACS often carry the
    patient's name, ID or the UIDs).
    """
    default = item.case_id or (Path(item.source).name if item.source != "<array>" else f"array{index}")
    if keep or isinstance(item.image, np.ndarray):
        return {"id": default}, []
    from breastai.data.readers.dicom_header import is_dicom, private_identity
    from breastai.data.readers.redaction import holds_identifier, redact

    if not is_dicom(item.image):
        return {"id": default}, []
    secrets, sop_hash = private_identity(item.image)
    rid = item.case_id
    # A case_id made from the file name (a folder input, or `prepare folder`) may hold an identifier.
    if rid is None or rid == Path(item.source).stem or holds_identifier(rid, secrets):
        rid = sop_hash or f"dicom-{index:05d}"
    return {"id": rid, "source": redact(item.source, secrets)}, secrets


def image_key(item: PredictItem, position: int) -> str:
    """Which image an input is, without naming it: a digest of its file and frame, or ``array<position>``.

    The records of one input share it (the lesions a segmenter finds in one image), and so do inputs
    that read the same file and frame (datalist rows of two findings on one film), so the breast and
    exam tables count images, not records. It is a digest because the run's journal keeps it for
    ``--resume``, and the journal names no file.
    """
    if isinstance(item.image, np.ndarray):
        return f"array{position}"
    from breastai.models.digest import content_digest

    return content_digest({"image": str(item.image), "frame": item.frame}).split(":", 1)[1][:16]


def grouping(item: PredictItem) -> dict[str, str]:
    """``exam``, ``laterality`` and ``view`` of an input, where it has them: from its datalist row, a
    DICOM file filling the rest from its header (the exam as the hash of its Study Instance UID)."""
    if isinstance(item.image, np.ndarray):
        return dict(item.grouping)
    from breastai.data.grouping import grouping_of

    return {k: v for k, v in grouping_of({**item.grouping, "image": item.image}).items() if v}


def identifiers(item: PredictItem) -> dict[str, str]:
    """``patient_id`` and ``sop_instance_uid`` columns (``--keep-identifiers``)."""
    import pydicom

    ds = pydicom.dcmread(item.image, stop_before_pixels=True, force=True)
    return {"patient_id": str(ds.get("PatientID", "")), "sop_instance_uid": str(ds.get("SOPInstanceUID", ""))}


class _LoadSet:
    """The inputs as a map-style dataset whose items are loaded inputs (what a DataLoader worker runs)."""

    def __init__(self, load: Callable[[int, PredictItem], Loaded], pairs: Sequence[tuple[int, PredictItem]]):
        self.load, self.pairs = load, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> Loaded:
        return self.load(*self.pairs[k])


def _as_is(loaded: Loaded) -> Loaded:
    return loaded


def loaded_inputs(load: Callable[[int, PredictItem], Loaded], pairs: Sequence[tuple[int, PredictItem]],
                  workers: int = 0) -> Iterator[Loaded]:
    """``load(position, item)`` of each pair, in order; with ``workers`` > 0 in DataLoader worker processes.

    At most two inputs per worker are loaded ahead of the main process (the DataLoader's
    prefetch), so memory does not grow with the number of inputs.

    Raises:
        ValueError: ``workers`` is negative.
    """
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    if workers == 0 or len(pairs) <= 1:
        for position, item in pairs:
            yield load(position, item)
        return
    from torch.utils.data import DataLoader

    # Forked workers share the loaded models and readers with the main process instead of
    # unpickling a copy each (the load stage never runs a network).
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    yield from DataLoader(_LoadSet(load, pairs), batch_size=None, shuffle=False, num_workers=min(workers, len(pairs)),
                          collate_fn=_as_is, multiprocessing_context=context)
