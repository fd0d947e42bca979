"""``--dicom-out``: a writer plug-in filing each scored DICOM input's results as DICOM objects.

For every DICOM input that was scored, :class:`DicomObjects` writes into ``DIR/<run_id>/``:

* ``NNNNN_<id>_sr.dcm``: a Comprehensive SR (TID 1500 Measurement Report) with the malignancy
  probability, the label at the operating threshold, the TTA uncertainty, the lesion's area and
  diameter, the algorithm identification (model, breastai version, checkpoint SHA-256), referencing
  the source image and the SEG; VerificationFlag UNVERIFIED;
* ``NNNNN_<id>_sc.dcm``: a Secondary Capture of the saliency map blended with the image, in the
  source's pixel grid (needs a saliency method);
* ``NNNNN_<id>_seg.dcm``: a binary SEG of the lesion outline (given, box-derived, from a mask
  provider or, with a segmenter, the outline of the record's lesion: algorithm type AUTOMATIC),
  when the record had one; each lesion record of an image gets its own SR and SEG.

The SEG and the SR's area and diameter come from the outline the model saw, on the source's grid,
whatever the saliency setting (``--saliency none`` drops only the SC). An image where the segmenter
found no lesion gets one SR saying so (:func:`~breastai.inference.dicom_objects.build_no_lesion_sr`:
the algorithm, "without findings", the lesion-presence probability) and nothing else, so the PACS
shows "analysed, nothing found" rather than nothing.

The codes chosen are listed in :mod:`breastai.inference.dicom_objects`. Each object is in the
source's study (same Study Instance UID, patient and study modules copied), in a series of its
own with new UIDs; a rerun makes new UIDs and a new ``<run_id>`` folder, earlier objects stay.

Patient identifiers: these objects carry the source's patient module, since filing into the
study needs it; this is the one place predict writes identifiers. Records, tables and logs stay
redacted: the record names the objects by their path under ``DIR`` (``dicom_sr``, ``dicom_sc``,
``dicom_seg``), which holds only the run id and the record's (hashed) id.

Each file is written atomically; :meth:`DicomObjects.abort` removes this run's folder. Inputs that
are not DICOM get no objects and one note for the run (``run["notes"]``, logged).
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from breastai.core.files import atomic_write_bytes
from breastai.inference.dicom_objects import (AlgorithmInfo, build_no_lesion_sr, build_sc, build_seg, build_sr,
                                              pixel_spacing, source_header)
from breastai.inference.inputs import RUN_MARKER
from breastai.inference.predictor import Predictor
from breastai.inference.segment import NO_LESION
from breastai.inference.maps import safe_stem
from breastai.models.lesions import lesion_size
from breastai.models.saliency import heat_overlay

__all__ = ["DicomObjects", "DICOM_FIELDS", "checkpoint_sha256"]

log = logging.getLogger("breastai")

DICOM_FIELDS = ("dicom_sr", "dicom_sc", "dicom_seg")


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of the checkpoint file's bytes (the identity of the weights, threshold and calibration)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _algorithm(predictor: Predictor, checkpoint: str | Path, saliency: str) -> AlgorithmInfo:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("breastai")
    except PackageNotFoundError:  # run from a source tree without installing
        ours = "unknown"
    # The file's own bytes identify the algorithm: the same file always gives the same identity,
    # whatever breastai version wrote the digest stored inside it.
    digest = checkpoint_sha256(checkpoint)
    model = "+".join(str(m.cfg["model"]["name"]) for m in predictor.members)
    seg = predictor.segmenter
    return AlgorithmInfo(model=model, version=ours, checkpoint_sha256=digest, threshold=predictor.threshold,
                         saliency="" if saliency == "none" else saliency,
                         segmenter="" if seg is None else seg.name,
                         presence_threshold=None if seg is None else seg.threshold)


class DicomObjects:
    """Writes an SR, a saliency SC and a lesion SEG per scored DICOM input into ``folder/<run_id>/``.

    Args:
        folder: the ``--dicom-out`` folder (created if needed).
        predictor: the predictor of the run (model names, classes, threshold).
        checkpoint: the checkpoint file, whose SHA-256 identifies the algorithm.
        saliency: the run's saliency method (named in the algorithm parameters).
    """

    def __init__(self, folder: str | Path, predictor: Predictor, checkpoint: str | Path, saliency: str = "gradcam++"):
        # highdicom logs the Study and SOP Instance UIDs of what it builds at INFO: identifiers stay
        # in the objects written for the study, never in the run's log.
        logging.getLogger("highdicom").setLevel(logging.WARNING)
        self.folder = Path(folder)
        self.predictor = predictor
        self.algorithm = _algorithm(predictor, checkpoint, saliency)
        # One device UID per checkpoint: the same model files results as the same observer.
        from pydicom.uid import generate_uid

        self.device_uid = generate_uid(prefix=None, entropy_srcs=["breastai", self.algorithm.checkpoint_sha256])
        self.dir: Path | None = None
        self.run_id: str | None = None
        self.not_dicom: int = 0
        self.written: list[Path] = []

    def start(self, out: Path, run_id: str) -> None:
        self.run_id, self.not_dicom, self.written = run_id, 0, []
        self.dir = self.folder / run_id
        # Run ids are unique: the folder exists only when this run resumes an interrupted one.
        self.dir.mkdir(parents=True, exist_ok=True)
        # Marks the folder as predict output, so a later predict on a parent folder skips these objects.
        (self.dir / RUN_MARKER).write_text(run_id)

    fields = DICOM_FIELDS

    def settings(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "checkpoint_sha256": self.algorithm.checkpoint_sha256}

    def restore(self, index: int, record: dict[str, Any]) -> None:
        """A record of the interrupted run a resumed run continues: its objects count as this run's."""
        if not _files_objects(record):
            return
        named = [self.folder / record[k] for k in DICOM_FIELDS if record.get(k)]
        self.written.extend(named)
        self.not_dicom += not named

    def write_item(self, index: int, record: dict[str, Any], maps: Any) -> None:
        for k in DICOM_FIELDS:
            record.setdefault(k, None)
        path = record.get("_path")
        if not _files_objects(record) or self.dir is None:
            return
        from breastai.data.readers.dicom_header import is_dicom

        if path is None or not is_dicom(path):
            self.not_dicom += 1
            return
        try:
            written = self._write(index, record, Path(path), maps)
        except Exception as exc:  # one input's objects failing must not stop the run; the record says why
            record["error"] = f"{record['source']}: cannot write DICOM objects ({_safe_message(exc, path)})"
            return
        for kind, rel in written.items():
            record[f"dicom_{kind}"] = rel

    def _write(self, index: int, record: dict[str, Any], path: Path, maps: Any) -> dict[str, str]:
        src = source_header(path)
        frame = record.get("_frame")
        smap, image, mask = maps if maps is not None else (None, None, None)
        shape = (int(src.Rows), int(src.Columns))
        for name, arr in (("map", smap), ("mask", mask)):
            if arr is not None and tuple(np.shape(arr)) != shape:
                raise ValueError(f"the {name} is {np.shape(arr)}, the image {shape}")
        from highdicom import UID

        if record.get("label") == NO_LESION:  # the segmenter looked and found nothing: that SR alone
            objects = {"sr": build_no_lesion_sr(src, record.get("lesion_probability"), UID(), self.algorithm,
                                                self.device_uid, frame, record.get("cancer_probability"))}
        else:
            objects = self._result_objects(src, record, smap, image, mask, frame)
        stem = f"{index:05d}_{safe_stem(str(record['id']))}"
        out: dict[str, str] = {}
        for kind, ds in objects.items():
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            target = self.dir / f"{stem}_{kind}.dcm"
            atomic_write_bytes(target, buf.getvalue())
            self.written.append(target)
            out[kind] = str(Path(self.run_id) / target.name)
        return out

    def _result_objects(self, src: Any, record: dict[str, Any], smap: np.ndarray | None, image: np.ndarray | None,
                        mask: np.ndarray | None, frame: int | None) -> dict[str, Any]:
        """A scored record's SEG (with an outline), SC (with a map) and SR (the SEG's lesion size with it)."""
        from highdicom import UID

        objects: dict[str, Any] = {}
        has_mask = mask is not None and bool(np.asarray(mask).any())
        if has_mask:
            objects["seg"] = build_seg(src, mask, UID(), self.algorithm, record.get("_mask_origin"), frame)
        if smap is not None and image is not None:
            objects["sc"] = build_sc(src, heat_overlay(image, smap, mask), UID(), self.algorithm)
        size = lesion_size(mask, pixel_spacing(src, mask)) if has_mask else None
        objects["sr"] = build_sr(src, record, UID(), self.algorithm, self.device_uid, objects.get("seg"), size,
                                 self.predictor.classes, frame)
        return objects

    def finish(self, records: Iterable[dict[str, Any]], run: dict[str, Any]) -> None:
        if self.not_dicom:
            note = (f"--dicom-out: {self.not_dicom} input(s) are not DICOM files and got no DICOM objects "
                    "(SR, SC and SEG are written for DICOM inputs only)")
            run.setdefault("notes", []).append(note)
            log.info("%s", note)
        run["dicom_out"] = {"run_id": self.run_id, "n_objects": len(self.written)}

    def abort(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.written = []


def _files_objects(record: dict[str, Any]) -> bool:
    """Whether a record gets DICOM objects: scored, or an image where the segmenter found no lesion."""
    return not record.get("error") and (record.get("probability") is not None or record.get("label") == NO_LESION)


def _safe_message(exc: Exception, path: Path | str) -> str:
    """The error's text without the source's identifying header values (it may quote them)."""
    from breastai.data.readers.dicom_header import private_identity
    from breastai.data.readers.redaction import redact

    secrets, _ = private_identity(path)
    return redact(f"{type(exc).__name__}: {exc}", secrets)
