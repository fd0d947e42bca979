"""Files written whole or not at all (atomic writes), file listings that skip hidden folders, file digests."""

from __future__ import annotations

import csv
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Create ``path`` with ``write(tmp)`` on a temporary file in the same folder, then rename.

    A crash leaves either the old file or the new one, never half of one. ``suffix`` is for
    writers that insist on one (``np.savez`` adds ``.npz`` to any other name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        # Created like a plain open() would (mode 0666 less the umask, applied by the kernel); mkstemp
        # would make it owner-only, and reading the umask means changing it for the whole process.
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            fh.write(text)

    atomic_write(path, write)


def csv_cells(row: dict[str, Any], exact: bool = False) -> dict[str, Any]:
    """``row`` as CSV cells: None empty, floats with 6 decimals or, with ``exact``, their shortest exact form."""
    return {k: ("" if v is None else ((repr(v) if exact else f"{v:.6f}") if isinstance(v, float) else v))
            for k, v in row.items()}


def atomic_write_csv(path: str | Path, fields: Sequence[str], rows: Iterable[dict[str, Any]], exact: bool = False) -> None:
    """A CSV (header ``fields``, quoted where needed) written atomically; None becomes empty.

    Floats get 6 decimals, or with ``exact`` their shortest exact form (metrics recomputed from
    the file then match to the last bit: rounding would create ties that change an AUC). Rows are
    written as they come, so an iterator over a file of any length takes no memory to speak of.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(csv_cells(r, exact))

    atomic_write(path, write)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def visible_files(root: str | Path) -> list[Path]:
    """Files under ``root``, sorted, leaving out hidden files and everything in hidden folders.

    Hidden folders such as ``.ipynb_checkpoints`` hold copies of real images: listed, one image
    would sit on both sides of a split, or be scored twice.
    """
    root = Path(root)
    return [f for f in sorted(root.rglob("*"))
            if not any(part.startswith(".") for part in f.relative_to(root).parts) and f.is_file()]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in blocks.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
