"""The journal of a predict run: its records as they are made, the inputs it finished, ``--resume``.

While a run works, ``OUT/partial/`` holds (and the run removes it once its final files are in)::

    run.json            the run's id, its settings and their digest (written atomically at the start)
    predictions.jsonl   one JSON line per record, appended as each input is finished
    predictions.csv     the same records as CSV rows (the standard columns), appended likewise
    manifest.jsonl      one line per finished input: its key (a digest of its path, frame, mask and
                        case id: no file name or identifier is written), its number of records, the
                        byte length of both record files after them, and their calibrated log-odds
                        and image keys (what the breast and exam tables combine and count, the
                        latter a digest too; not columns of the tables)

An input's records are appended to both record files and flushed before its manifest line is, so
the manifest only ever names inputs whose records are whole on disk. A run that is killed (or
stopped by an error after finishing inputs) leaves the journal behind; ``--resume`` reads the
manifest up to its last whole, consistent line (a half-written line, or one that points past the
end of a record file, ends it), cuts both record files back to the length that line gives (the
records of an input that was not finished, and any half-written line, go), skips the finished
inputs and appends the others. The journal is append-only: nothing in it is rewritten but for that cut.

Order: records come in input order. A resumed run keeps the finished inputs' records as they were
written and appends the rest in input order, so with the same inputs its records are exactly those
of an uninterrupted run, in the same order. A resumed run must share the interrupted run's settings
(checkpoint, segmenter, saliency, TTA, writers ...; their digest is in ``run.json``) and must still
list every input it finished; it is refused otherwise, naming what differs.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

from breastai.core.files import atomic_write_text, csv_cells
from breastai.inference.inputs import RUN_MARKER, PredictItem
from breastai.models.digest import content_digest

__all__ = ["PARTIAL", "ResumeError", "RecordLog", "RunJournal", "input_key"]

log = logging.getLogger("breastai")

PARTIAL = "partial"
_FORMAT = 1
_RUN, _JSONL, _CSV, _MANIFEST = "run.json", "predictions.jsonl", "predictions.csv", "manifest.jsonl"


class ResumeError(ValueError):
    """``--resume`` cannot continue the interrupted run in this output folder (the message says why)."""


def input_key(item: PredictItem) -> str:
    """The digest that names an input in the manifest: its image (path or array), frame, mask and case id."""
    return content_digest({"image": item.image if not isinstance(item.image, (str, Path)) else str(item.image),
                           "frame": item.frame, "mask": item.mask, "case_id": item.case_id})


class RecordLog:
    """A JSON Lines file of records, read as it is iterated (any number of times): what a writer's
    ``finish`` gets instead of a list, so that no run holds all its records in memory.

    Args:
        path: the file.
        n: its number of records, when known (else counted on ``len``).
    """

    def __init__(self, path: str | Path, n: int | None = None) -> None:
        self.path, self._n = Path(path), n

    def __len__(self) -> int:
        if self._n is None:
            self._n = sum(1 for _ in self)
        return self._n

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


class RunJournal:
    """The journal of one run in ``OUT/partial/`` (see the module docstring); open it with :meth:`open`.

    Attributes:
        run_id: the run's id (a resumed run keeps the interrupted run's).
        resumed: the number of inputs finished by the interrupted run (0: a fresh run).
        n_inputs: inputs finished so far, the interrupted run's included.
        n_records: their records.
    """

    def __init__(self, folder: Path, run_id: str, columns: Sequence[str]) -> None:
        self.folder, self.run_id, self.columns = folder, run_id, list(columns)
        self.resumed = self.n_inputs = self.n_records = 0
        self._done: list[dict[str, Any]] = []  # the interrupted run's manifest entries (a resumed run)
        self._keys: dict[int, str] = {}
        self._files: tuple[Any, Any, Any] | None = None
        self._csv: Any = None

    @classmethod
    def open(cls, out: Path, settings: dict[str, Any], columns: Sequence[str], resume: bool = False) -> RunJournal:
        """The journal of a run into ``out``: a fresh one, or with ``resume`` the interrupted run's.

        A fresh run discards an interrupted run's journal (with a warning; its maps go when this run
        finishes). ``resume`` without an interrupted run starts a fresh one (a note says so), so a job
        that is always started with ``--resume`` runs the same the first time and after a kill.

        Args:
            out: the output folder (locked by the caller).
            settings: what the records depend on (JSON values); a resumed run's must equal the
                interrupted run's.
            columns: the CSV columns.

        Raises:
            ResumeError: ``resume`` and the interrupted run had other settings.
        """
        folder = out / PARTIAL
        header = _read_json(folder / _RUN) if folder.is_dir() else None
        settings = json.loads(json.dumps(settings))  # as they read back from run.json
        if resume and header is not None:
            _check_same(out, header, settings)
            journal = cls(folder, str(header["run_id"]), header["columns"])
            journal._recover()
            return journal
        if folder.exists():
            if header is not None and not resume:
                log.warning("%s: an interrupted predict run was left here; it is discarded (pass --resume to "
                            "continue it instead)", out)
            shutil.rmtree(folder)
        elif resume:
            log.info("%s: no interrupted run to resume; every input is scored", out)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        folder.mkdir()
        (folder / RUN_MARKER).write_text(run_id)
        (folder / _JSONL).write_bytes(b"")
        (folder / _MANIFEST).write_bytes(b"")
        with open(folder / _CSV, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerow(columns)
        # Written last: a journal without it was never begun, and is started afresh.
        atomic_write_text(folder / _RUN, json.dumps({"format": _FORMAT, "run_id": run_id, "digest": content_digest(settings),
                                                     "settings": settings, "columns": list(columns),
                                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
        return cls(folder, run_id, columns)

    def _recover(self) -> None:
        """Read the manifest up to its last consistent line and cut the record files back to it."""
        sizes = {name: (self.folder / name).stat().st_size for name in (_JSONL, _CSV)}
        raw = (self.folder / _MANIFEST).read_bytes()
        *lines, tail = raw.split(b"\n")  # ``tail``: empty, or a half-written last line
        kept, length = [], 0
        ends = {_JSONL: 0, _CSV: _header_length(self.folder / _CSV)}
        for line in lines:
            try:
                entry = json.loads(line)
                end = {_JSONL: int(entry["jsonl"]), _CSV: int(entry["csv"])}
                if not (isinstance(entry["key"], str) and int(entry["n"]) == len(entry["z"]) >= 1
                        and len(entry.get("img") or entry["z"]) == len(entry["z"])):
                    raise ValueError("malformed entry")
            except (ValueError, KeyError, TypeError):
                break
            if any(end[f] < ends[f] or end[f] > sizes[f] for f in end):  # points past what reached the disk
                break
            kept.append(entry)
            ends, length = end, length + len(line) + 1
        dropped = len(lines) - len(kept) + bool(tail)
        if dropped:
            log.info("%s: %d manifest line(s) were not whole or did not fit the records; their inputs are scored "
                     "again", self.folder, dropped)
        for name, size in ((_MANIFEST, length), *ends.items()):
            os.truncate(self.folder / name, size)
        self._done = kept
        self.resumed = self.n_inputs = len(kept)
        self.n_records = sum(int(e["n"]) for e in kept)

    def pending(self, items: Sequence[PredictItem]) -> list[tuple[int, PredictItem]]:
        """``(position, item)`` of the inputs still to score, in input order.

        An input listed k times is finished as often as the manifest names it (a list that repeats
        an image scores it each time).

        Raises:
            ResumeError: inputs the interrupted run finished are no longer among ``items``.
        """
        finished = Counter(e["key"] for e in self._done)
        seen: Counter[str] = Counter()
        todo = []
        for position, item in enumerate(items):
            key = input_key(item)
            seen[key] += 1
            if seen[key] > finished[key]:
                todo.append((position, item))
                self._keys[position] = key
        missing = sum((finished - seen).values())
        if missing:
            raise ResumeError(f"--resume: {missing} of the {len(self._done)} input(s) the interrupted run in "
                              f"{self.folder.parent} finished are not among the inputs given now; give the same "
                              "inputs (more may be added), or run without --resume to start afresh")
        return todo

    def restored(self) -> Iterator[dict[str, Any]]:
        """The records of the inputs the interrupted run finished, in order, each with its
        ``_calibrated_logit`` and ``_image`` (from the manifest) for the writers to take back."""
        kept = ((z, img) for e in self._done for z, img in zip(e["z"], e.get("img") or [None] * len(e["z"])))
        for record, (z, img) in zip(RecordLog(self.folder / _JSONL), kept):
            record["_calibrated_logit"] = z
            if img is not None:
                record["_image"] = img
            yield record

    def add(self, position: int, records: Sequence[dict[str, Any]], log_odds: Sequence[float | None],
            images: Sequence[str | None] = ()) -> None:
        """Append one finished input's records (public fields only) and then its manifest line, with
        their calibrated log-odds and image keys (private fields the level tables need back)."""
        if self._files is None:
            self._files = tuple(open(self.folder / name, "a", newline="", encoding="utf-8")  # type: ignore[assignment]
                                for name in (_JSONL, _CSV, _MANIFEST))
            self._csv = csv.DictWriter(self._files[1], fieldnames=self.columns, lineterminator="\n",
                                       extrasaction="ignore")
        jsonl, table, manifest = self._files
        for r in records:
            jsonl.write(json.dumps(r) + "\n")
            self._csv.writerow(csv_cells(r))
        jsonl.flush()
        table.flush()
        entry = {"key": self._keys.pop(position), "n": len(records), "jsonl": jsonl.tell(), "csv": table.tell(),
                 "z": list(log_odds), **({"img": list(images)} if images else {})}
        manifest.write(json.dumps(entry) + "\n")
        manifest.flush()
        self.n_inputs += 1
        self.n_records += len(records)

    def records(self) -> RecordLog:
        """Every record so far, the interrupted run's included, read from the journal."""
        if self._files is not None:
            self._files[0].flush()
        return RecordLog(self.folder / _JSONL, self.n_records)

    def close(self) -> None:
        """Close the files; the journal stays for ``--resume``."""
        for fh in self._files or ():
            fh.close()
        self._files = None

    def remove(self) -> None:
        """Close and delete the journal (the run finished, or left nothing to resume)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _FORMAT else None


def _header_length(path: Path) -> int:
    with open(path, "rb") as fh:
        return len(fh.readline())


def _check_same(out: Path, header: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse to resume a run made with other settings, naming the ones that differ."""
    if header.get("digest") == content_digest(settings):
        return
    before = header.get("settings") or {}
    differ = [k for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k)]
    what = {"model": "the checkpoint (its weights, calibration or configuration), segmenter or mask providers",
            "writers": "the outputs (map size limit, level rules, --dicom-out)"}
    named = "; ".join(what.get(k, f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now") for k in differ)
    raise ResumeError(f"--resume: the interrupted run in {out} was made with other settings ({named or 'unknown'}); "
                      "resume it with the checkpoint and options it was started with, or run without --resume to "
                      "start afresh")
