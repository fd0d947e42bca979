"""Writing a predict run: output writers are plug-ins of :func:`run_predict`.

A writer (see :class:`Writer`) is told when a run starts, gets every record with its maps as the
predictor makes it, and is told when the run finishes (or fails). Built in: :class:`SaliencyMaps`
(maps as ``.npy`` and PNG overlays), :class:`OutlineMaps` (a segmenter's lesion outlines, likewise;
both in :mod:`breastai.inference.maps`),
:class:`~breastai.inference.level_tables.LevelTables`
(``breasts.csv`` and ``exams.csv`` when the inputs carry exam grouping) and
:class:`PredictionTables` (``predictions.csv``/``.json``).

Output folder layout (a rerun never mixes old and new results)::

    OUT/predictions.csv, OUT/predictions.json     replaced atomically at the END of a run
    OUT/breasts.csv|.json, OUT/exams.csv|.json     likewise, when the inputs carry grouping
    OUT/saliency/<run_id>/NNNNN_<id>.npy|.png       maps of that run only
    OUT/outlines/<run_id>/NNNNN_<id>.npy|.png       a segmenter's outlines of that run (with --segmenter)

Each run writes its maps into a fresh ``saliency/<run_id>/`` (and ``outlines/<run_id>/``) folder;
the prediction files, which reference only those folders, are swapped in when the run has
finished, and only then are the folders of earlier runs (marked by a ``.breastai-run`` file)
deleted. A crashed run leaves the previous predictions and their maps intact.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import textwrap
import time
from pathlib import Path
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from breastai.core.files import atomic_write, atomic_write_csv
from breastai.inference.inputs import RUN_MARKER, PredictItem
from breastai.inference.level_tables import LevelTables
from breastai.inference.maps import MAP_FOLDERS, MAP_MAX_SIDE, OutlineMaps, SaliencyMaps
from breastai.inference.journal import RunJournal
from breastai.inference.predictor import MaskProvider, Predictor
from breastai.inference.records import OPTIONAL_FIELDS, RECORD_FIELDS, Maps, check_saliency, strip_private
from breastai.inference.segment import NO_LESION
from breastai.models.outliner import SegmenterSource

__all__ = ["Writer", "Engine", "SaliencyMaps", "OutlineMaps", "PredictionTables", "OutputBusyError", "output_lock",
           "write_predictions", "default_writers", "run_predict", "MAP_MAX_SIDE", "MAP_FOLDERS"]


class Writer(Protocol):
    """An output of a predict run (tables, maps, DICOM objects)."""

    def start(self, out: Path, run_id: str) -> None:
        """A run writing into ``out`` begins."""

    def write_item(self, index: int, record: dict[str, Any], maps: Maps | None) -> None:
        """One input scored (or failed); the writer may add its fields to ``record``."""

    def finish(self, records: Iterable[dict[str, Any]], run: dict[str, Any]) -> None:
        """Every input is done; ``run`` is the run summary. ``records`` are every record of the run (an
        interrupted run's first, when resumed), read from the journal as they are iterated."""

    def abort(self) -> None:
        """The run failed before finishing any input: remove what this run wrote, leave earlier results
        as they were. (A run that finished inputs keeps what it wrote for ``--resume``.)"""

    # Optional, looked up with getattr:
    #   fields: tuple[str, ...]            the record fields it adds (columns of the partial CSV)
    #   settings() -> dict                 what it writes that a resumed run must share (JSON values)
    #   restore(index, record) -> None     a record the interrupted run finished, when a run is resumed
    #                                      (with its private ``_calibrated_logit`` and ``_image``); its
    #                                      files are there


class OutputBusyError(RuntimeError):
    """Another predict run is writing into the same output folder."""


LOCK_NAME = ".breastai-lock"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder for one run; a second run is refused at once.

    Two runs into one folder would each replace the other's tables and delete the other's maps.
    The lock is the kernel's (``flock``): it is released when the run ends, however it ends, even
    by ``kill -9``, so a crashed run never leaves a stale lock behind.

    Raises:
        OutputBusyError: another live run holds the folder.
    """
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusyError(f"{out}: another breastai predict run is writing into this folder; wait for it "
                                  "to finish or choose another --out") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock



class PredictionTables:
    """``predictions.csv``, ``predictions.json`` and ``predictions.jsonl``, swapped in atomically when the
    run finishes, made from the run's journal (:mod:`breastai.inference.journal`), where every record
    was appended as it was made."""

    def __init__(self) -> None:
        self.out: Path | None = None

    def start(self, out: Path, run_id: str) -> None:
        self.out = out

    def write_item(self, index: int, record: dict[str, Any], maps: Maps | None) -> None:
        pass

    def finish(self, records: Iterable[dict[str, Any]], run: dict[str, Any]) -> None:
        write_predictions(records, self.out, run)

    def abort(self) -> None:
        pass


def write_predictions(records: Iterable[dict[str, Any]], out: str | Path, run: dict[str, Any]) -> None:
    """``predictions.csv``, ``predictions.json`` (``{"run": ..., "records": [...]}``) and ``predictions.jsonl``
    (the same records, one per line), each atomically.

    ``records`` is read three times, a record at a time (a list, or a
    :class:`~breastai.inference.journal.RecordLog` of any length): memory does not grow with it.
    Every record has every column, in the order of ``predictions.csv``.
    """
    out = Path(out)
    # Arrays and private (``_``) keys never go into the tables: the latter may hold unredacted paths.
    extra = {k for r in records for k in r if not k.startswith("_")} - set(RECORD_FIELDS) - {"saliency_map", "image"}
    fields = list(RECORD_FIELDS) + sorted(extra)

    def rows() -> Iterator[dict[str, Any]]:
        return ({k: r.get(k) for k in fields} for r in records)

    def write_json(tmp: Path) -> None:
        # json.dumps({"run": run, "records": rows}, indent=1), written a record at a time
        with open(tmp, "w", newline="") as fh:
            head = json.dumps({"run": run, "records": []}, indent=1)
            cut = head.rindex("[]")
            fh.write(head[:cut + 1])
            n = 0
            for n, row in enumerate(rows(), 1):
                fh.write(("\n" if n == 1 else ",\n") + textwrap.indent(json.dumps(row, indent=1), "  "))
            fh.write(("\n " if n else "") + head[cut + 1:])

    def write_jsonl(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            for row in rows():
                fh.write(json.dumps(row) + "\n")

    atomic_write(out / "predictions.json", write_json)
    atomic_write(out / "predictions.jsonl", write_jsonl)
    atomic_write_csv(out / "predictions.csv", fields, rows())



# What scores a run's inputs: engine(pred, pairs, saliency, tta, keep_identifiers, workers) -> (position, results)...
Engine = Callable[[Predictor, Sequence[tuple[int, PredictItem]], str, int, bool, int],
                  Iterator[tuple[int, list[tuple[dict[str, Any], Maps | None]]]]]


def _remove_old_runs(out: Path, keep: str | None) -> None:
    for kind in MAP_FOLDERS:
        if not (out / kind).is_dir():
            continue
        for d in (out / kind).iterdir():
            if d.is_dir() and d.name != keep and (d / RUN_MARKER).is_file():
                shutil.rmtree(d, ignore_errors=True)


def default_writers(saliency: str, level_rules: Sequence[Any] = (), *extra: Writer,
                    map_max_side: int = MAP_MAX_SIDE) -> list[Writer]:
    """Maps (unless ``saliency`` is ``none``; reduced beyond ``map_max_side``), a segmenter's outlines,
    ``extra`` writers, the level tables and the prediction tables, in that order."""
    return [*([SaliencyMaps(map_max_side)] if saliency != "none" else []), OutlineMaps(map_max_side), *extra,
            LevelTables(level_rules), PredictionTables()]


def run_predict(
    checkpoint: Any,
    inputs: Sequence[Any],
    out: str | Path,
    masks: Sequence[Any] | None = None,
    saliency: str = "gradcam++",
    tta: int = 0,
    keep_identifiers: bool = False,
    find_masks: bool = False,
    device: str = "auto",
    saliency_upsample: str | None = None,
    writers: Sequence[Writer] | None = None,
    mask_providers: Sequence[MaskProvider] = (),
    level_rules: Sequence[Any] = (),
    map_max_side: int = MAP_MAX_SIDE,
    segmenter: SegmenterSource | None = None,
    workers: int = 0,
    resume: bool = False,
    keep_records: bool = True,
    engine: Engine | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predict ``inputs`` with ``checkpoint`` (a path or a :class:`~breastai.inference.predictor.Predictor`) into ``out``.

    Every record is appended to the run's journal (``OUT/partial/``, :mod:`breastai.inference.journal`)
    as its input finishes; the final tables are made from it when the run ends. A run stopped after
    finishing inputs (killed, or an error) leaves the journal, its maps and its writers' files for
    ``resume``; one that finished none aborts its writers and leaves nothing.

    Args:
        writers: the outputs (default: :class:`SaliencyMaps` unless ``saliency`` is ``none``, then
            :class:`~breastai.inference.level_tables.LevelTables` and :class:`PredictionTables`); they
            finish in this order, so tables come last.
        level_rules: fitted :class:`~breastai.reporting.levels.LevelRule` s for the default writers'
            breast and exam tables (default: the max rule at the checkpoint's threshold).
        mask_providers: outline inputs that come without a mask (a path-loaded predictor only).
        segmenter: a segmentation checkpoint (path or loaded) that outlines the inputs still without
            a mask, one record per lesion (a path-loaded predictor only; see
            :mod:`breastai.inference.segment`).
        map_max_side: the default writers store maps of larger images reduced to this many pixels
            on the longer side (0: full size; see :class:`SaliencyMaps`).
        workers: decode and preprocess in this many worker processes while the networks run (0: in
            this process); the records are the same.
        resume: continue the run a kill or an error interrupted in ``out``: its finished inputs are
            skipped and their records kept (see :mod:`breastai.inference.journal`).
        keep_records: return the records; False returns an empty list and holds none in memory
            (read them from ``predictions.jsonl``), for runs over an archive.
        engine: scores the inputs still to score instead of the predictor in this process, called
            as ``engine(pred, pairs, saliency, tta, keep_identifiers, workers)`` and yielding what
            :meth:`Predictor.iter_inputs` yields, in input order (e.g.
            :class:`breastai.inference.ray_engine.RayScoring`); journal and writers stay here.

    Returns:
        The records (with ``resume``, the interrupted run's first) and the run summary (also stored
        in ``predictions.json``).

    Raises:
        ResumeError: ``resume`` and the interrupted run had other settings or inputs.
    """
    if isinstance(checkpoint, Predictor) and segmenter is not None:
        raise ValueError("run_predict: give the segmenter to the Predictor (Predictor.from_checkpoint(..., segmenter=...))")
    check_saliency(saliency)
    pred = checkpoint if isinstance(checkpoint, Predictor) else Predictor.from_checkpoint(
        checkpoint, device=device, mask_providers=mask_providers, segmenter=segmenter)
    if saliency_upsample is not None:  # else the predictor's own setting (bicubic unless changed)
        pred.set_saliency_upsample(saliency_upsample)
    if writers is None:
        writers = default_writers(saliency, level_rules, map_max_side=map_max_side)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        items = pred.expand(inputs, masks, find_masks)
        settings = {"model": pred.fingerprint(), "saliency": saliency, "saliency_upsample": pred.saliency_upsample,
                    "tta": tta, "keep_identifiers": keep_identifiers, "find_masks": find_masks,
                    "writers": [{"writer": type(w).__name__, **(w.settings() if hasattr(w, "settings") else {})}
                                for w in writers]}
        columns = list(RECORD_FIELDS) + sorted({*OPTIONAL_FIELDS, *(f for w in writers for f in getattr(w, "fields", ()))})
        journal = RunJournal.open(out, settings, columns, resume)
        try:
            todo = journal.pending(items)
        except BaseException:
            journal.close()
            raise
        scored = (engine or _local)(pred, todo, saliency, tta, keep_identifiers, workers)
        return _run_locked(pred, scored, out, journal, saliency, tta, writers, keep_records)


def _local(pred: Predictor, pairs: Sequence[tuple[int, PredictItem]], saliency: str, tta: int, keep_identifiers: bool,
           workers: int) -> Iterator[tuple[int, list[tuple[dict[str, Any], Maps | None]]]]:
    return pred.iter_inputs(pairs, saliency, tta, keep_identifiers, workers)


def _run_locked(pred: Predictor, scored: Iterator[tuple[int, list[tuple[dict[str, Any], Maps | None]]]], out: Path,
                journal: RunJournal, saliency: str, tta: int, writers: Sequence[Writer],
                keep_records: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    t0 = time.time()
    started: list[Writer] = []
    kept: list[dict[str, Any]] = []
    tally: Counter[str] = Counter()
    restored = 0
    try:
        for w in writers:
            w.start(out, journal.run_id)
            started.append(w)
        index = 0
        for rec in journal.restored():
            for w in writers:
                if hasattr(w, "restore"):
                    w.restore(index, rec)
            index += 1
            _count(tally, rec, pred.ood_margin)
            if keep_records:
                kept.append(rec)
        restored = index
        for position, results in scored:
            done, kept_back = [], []
            for rec, maps in results:
                for w in writers:
                    w.write_item(index, rec, maps)
                index += 1
                kept_back.append(_count(tally, rec, pred.ood_margin))
                done.append(rec)
            journal.add(position, done, [p.get("_calibrated_logit") for p in kept_back],
                        [p.get("_image") for p in kept_back])
            if keep_records:
                kept.extend(done)
    except BaseException:
        if journal.n_inputs:  # finished inputs are kept for --resume, with the files their records name
            journal.close()
        else:
            for w in started:
                w.abort()
            journal.remove()
        raise
    if not journal.n_records:  # nothing scored: the earlier results stay as they were
        for w in writers:
            w.abort()
        journal.remove()
        return [], {"run_id": None, "n": 0, "n_failed": 0, "seconds": round(time.time() - t0, 3)}
    run = {
        "run_id": journal.run_id, "checkpoint": pred.source, "saliency": saliency,
        "saliency_upsample": pred.saliency_upsample, "tta": tta,
        "temperature": pred.temperature, "threshold": pred.threshold, "classes": pred.classes,
        "recalibration": pred.recalibration[-1].summary() if pred.recalibration else None,
        "adaptation": pred.adaptation[-1].summary() if pred.adaptation else None,
        "preprocess_mode": pred.pre["mode"], "segmenter": pred.segmenter.source if pred.segmenter else None,
        "segmenter_threshold": pred.segmenter.threshold if pred.segmenter else None,
        "segmenter_recalibration": pred.segmenter.recalibration[-1].summary()
        if pred.segmenter and pred.segmenter.recalibration else None,
        "n": journal.n_records, **{f"n_{k}": tally[k] for k in ("failed", "no_lesion", "ood", "ood_scored", "shifted")},
        "seconds": round(time.time() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if journal.resumed:
        run["resumed"] = {"inputs": journal.resumed, "records": restored}
    records = journal.records()
    for w in writers:
        w.finish(records, run)
    _remove_old_runs(out, keep=journal.run_id)
    journal.remove()
    return kept, run


def _count(tally: Counter[str], rec: dict[str, Any], margin: float | None) -> dict[str, Any]:
    """Count a record into the run summary and remove its private keys (the writers have had it);
    returns them: the journal keeps the calibrated log-odds and the image key for the level tables."""
    private = strip_private(rec)
    tally["failed"] += rec["error"] is not None
    tally["no_lesion"] += rec.get("label") == NO_LESION
    tally["ood"] += rec.get("ood") is True
    scored = rec.get("ood_score") is not None  # a "no lesion found" record has none
    tally["ood_scored"] += scored
    tally["shifted"] += scored and rec["ood_score"] * margin > 1
    return private
