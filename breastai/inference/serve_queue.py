"""The persistent on-disk queue of ``breastai serve``: received images, scoring rounds, sent objects.

Every state change is one atomic file operation, so a node killed at any instant (``kill -9``)
restarts where it stopped: an acknowledged image is on disk, a round is either complete or
removed and scored again, and an object is either marked sent or sent (again, with the same
SOP Instance UID) after the restart. Layout under the node's ``--out``::

    OUT/studies/<study>/images/<sop>.dcm             a received image, as it arrived
    OUT/studies/<study>/rounds/<NNNN>/round.json     written last: the round is complete
    OUT/studies/<study>/rounds/<NNNN>/predict/       the round's predictions.csv / .json
    OUT/studies/<study>/rounds/<NNNN>/dicom/<run>/   its SR, SC and SEG objects
    OUT/studies/<study>/rounds/<NNNN>/sent/<name>    one marker per object the destination accepted

``<study>`` and ``<sop>`` are the first 16 hex digits of the SHA-256 of the Study and SOP
Instance UIDs (:func:`breastai.data.readers.dicom_header.uid_hash`): no identifier is ever a name.
A round scores the images of a study that no complete round has scored yet; an image that
arrives again with the same SOP Instance UID after it was scored is kept but not scored again.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breastai.core.files import atomic_write_bytes, atomic_write_text

__all__ = ["Round", "Study", "StudyQueue"]

ROUND_FILE = "round.json"
_ROUND_NAME = re.compile(r"^\d{4,}$")


@dataclass
class Round:
    """One complete scoring round of a study: what it scored and the objects it made."""

    dir: Path
    images: list[str]
    objects: list[str]  # paths under ``dir``
    results: dict[str, Any] = field(default_factory=dict)  # sop hash -> probability, or {"error": reason}

    def unsent(self) -> list[Path]:
        """The round's objects the destination has not accepted yet, in order."""
        return [self.dir / rel for rel in self.objects if not (self.dir / "sent" / Path(rel).name).exists()]

    def mark_sent(self, obj: Path) -> None:
        """Record, atomically, that the destination accepted ``obj``."""
        atomic_write_text(self.dir / "sent" / obj.name, time.strftime("%Y-%m-%dT%H:%M:%S%z"))


@dataclass
class Study:
    """A study folder of the queue."""

    dir: Path

    @property
    def key(self) -> str:
        """The study's hash: the only name logs and files use for it."""
        return self.dir.name

    def images(self) -> dict[str, Path]:
        """Received images by SOP hash (temporary files of unfinished writes excluded)."""
        return {p.stem: p for p in sorted((self.dir / "images").glob("*.dcm")) if not p.name.startswith(".")}

    def last_received(self) -> float:
        """When the study's latest image was written (0 when it has none)."""
        return max((p.stat().st_mtime for p in self.images().values()), default=0.0)

    def rounds(self) -> list[Round]:
        """The complete rounds, oldest first."""
        out = []
        for d in sorted((self.dir / "rounds").glob("*")):
            f = d / ROUND_FILE
            if _ROUND_NAME.match(d.name) and f.is_file():
                state = json.loads(f.read_text())
                out.append(Round(d, list(state["images"]), list(state["objects"]), dict(state.get("results", {}))))
        return out

    def unscored(self) -> dict[str, Path]:
        """Images no complete round has scored."""
        done = {sop for r in self.rounds() for sop in r.images}
        return {sop: p for sop, p in self.images().items() if sop not in done}

    def new_round(self) -> Path:
        """A fresh folder for the next round; incomplete ones (a crash while scoring) are removed first."""
        rounds = self.dir / "rounds"
        rounds.mkdir(parents=True, exist_ok=True)
        numbers = [int(d.name) for d in rounds.iterdir() if _ROUND_NAME.match(d.name)]
        self.drop_incomplete()
        d = rounds / f"{max(numbers, default=0) + 1:04d}"
        d.mkdir()
        return d

    def drop_incomplete(self) -> int:
        """Remove round folders without ``round.json``; returns how many there were."""
        n = 0
        for d in (self.dir / "rounds").glob("*"):
            if d.is_dir() and not (d / ROUND_FILE).is_file():
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n

    def complete_round(self, d: Path, images: list[str], objects: list[str], results: dict[str, Any]) -> Round:
        """Write ``round.json`` (atomically, last): from now on the round's images count as scored."""
        atomic_write_text(d / ROUND_FILE, json.dumps({"images": images, "objects": objects, "results": results,
                                                      "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
        return Round(d, images, objects, results)


class StudyQueue:
    """The studies under ``OUT/studies``.

    Args:
        root: the node's ``--out`` folder.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root) / "studies"
        self.root.mkdir(parents=True, exist_ok=True)

    def study(self, key: str) -> Study:
        return Study(self.root / key)

    def studies(self) -> list[Study]:
        """Every study folder, in name order."""
        return [Study(d) for d in sorted(self.root.iterdir()) if d.is_dir() and not d.name.startswith(".")]

    def add(self, study_key: str, sop_key: str, data: bytes) -> Path:
        """Store a received image (its encoded bytes, with file meta), atomically."""
        path = self.root / study_key / "images" / f"{sop_key}.dcm"
        atomic_write_bytes(path, data)
        return path
