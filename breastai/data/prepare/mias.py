"""mini-MIAS: one datalist row per benign or malignant finding of ``Info.txt``.

``Info.txt`` lists ``REF TISSUE CLASS [SEVERITY [X Y RADIUS]]`` per finding; x and y count
from the *bottom-left* corner (the file's note 3), so the image row is ``height - y``. A film
can list several findings (mdb005) and of different severity (mdb144). Some findings have no
coordinates (widely distributed calcifications, note 3 of the file); they are reported and
left out, or kept with an empty mask (= whole image). Films come in left/right pairs of one
patient (odd number = right, next even number = left) that share a group; the rows say so in their
``exam`` (the patient) and ``laterality`` columns, for breast- and exam-level scores.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from breastai.core.files import atomic_write
from breastai.data.prepare.registry import Option, Preparer, register_preparer
from breastai.data.prepare.report import PrepareReport

__all__ = ["MiasFinding", "MiasParseError", "parse_info", "finding_mask", "prepare_mias"]

TISSUES = {"F", "G", "D"}
CLASSES = {"CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"}
SEVERITY = {"B": "benign", "M": "malignant"}
_LINE = re.compile(r"^(mdb\d{3})\s+(\S+)\s+(\S+)(.*)$")


class MiasParseError(ValueError):
    """Info.txt has a line that is not understood; the message names the file and line."""


@dataclass(frozen=True)
class MiasFinding:
    """One line of Info.txt.

    Attributes:
        ref: film reference, e.g. ``mdb005``.
        tissue: background tissue F, G or D.
        abnormality: CALC, CIRC, SPIC, MISC, ARCH, ASYM or NORM.
        severity: ``B``, ``M`` or ``""`` for normal films.
        x: centre column, or None where the file gives no coordinates.
        y: centre y counted from the *bottom* of the image, or None.
        radius: radius in pixels, or None.
        line: line number in Info.txt.
    """

    ref: str
    tissue: str
    abnormality: str
    severity: str
    x: int | None
    y: int | None
    radius: int | None
    line: int

    @property
    def has_coordinates(self) -> bool:
        """Whether centre and radius are given."""
        return self.x is not None and self.y is not None and self.radius is not None

    @property
    def laterality(self) -> str:
        """``L`` for an even film number, ``R`` for an odd one (Info.txt, note 1)."""
        return "L" if int(self.ref[3:]) % 2 == 0 else "R"

    @property
    def patient(self) -> int:
        """Patient number: films 2k-1 (right) and 2k (left) belong to patient k."""
        return (int(self.ref[3:]) + 1) // 2


def parse_info(path: str | Path) -> list[MiasFinding]:
    """Parse a mini-MIAS ``Info.txt`` (header and notes are skipped).

    Raises:
        MiasParseError: a film line with an unknown tissue, class or severity, or with
            coordinates that are not three integers.
    """
    path = Path(path)
    findings = []
    for no, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        m = _LINE.match(raw.strip())
        if not m:
            continue
        ref, tissue, abn, rest = m.group(1), m.group(2), m.group(3), m.group(4).split()
        where = f"{path}, line {no} ({raw.strip()!r})"
        if tissue not in TISSUES:
            raise MiasParseError(f"{where}: unknown background tissue {tissue!r}")
        if abn not in CLASSES:
            raise MiasParseError(f"{where}: unknown abnormality class {abn!r}")
        severity = ""
        if rest and rest[0] in SEVERITY:
            severity = rest.pop(0)
        elif abn != "NORM":
            raise MiasParseError(f"{where}: abnormal finding without severity B or M")
        coords: list[int | None] = [None, None, None]
        numbers = [t for t in rest if not t.startswith("*") and not t.upper().startswith("NOTE")]
        # "*NOTE 3*" (no coordinates) splits into "*NOTE" and "3*".
        numbers = [t for t in numbers if not t.endswith("*")]
        if numbers:
            if len(numbers) != 3 or not all(t.lstrip("-").isdigit() for t in numbers):
                raise MiasParseError(f"{where}: expected 'x y radius' as three integers, got {numbers}")
            coords = [int(t) for t in numbers]
        findings.append(MiasFinding(ref, tissue, abn, severity, coords[0], coords[1], coords[2], no))
    if not findings:
        raise MiasParseError(f"{path}: no film lines (mdbNNN ...) found")
    return findings


def finding_mask(shape: tuple[int, int], finding: MiasFinding, kind: str = "circle") -> np.ndarray:
    """Boolean mask of a finding: a disc (or its bounding square) in image coordinates.

    The centre row is ``shape[0] - y`` since Info.txt counts y from the bottom.
    """
    if not finding.has_coordinates:
        raise ValueError(f"{finding.ref}: finding has no coordinates")
    h, w = shape
    cy, cx, r = h - float(finding.y), float(finding.x), float(finding.radius)  # type: ignore[arg-type]
    rows, cols = np.ogrid[:h, :w]
    if kind == "circle":
        return (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
    if kind == "box":
        return (np.abs(rows - cy) <= r) & (np.abs(cols - cx) <= r)
    raise ValueError(f"unknown mask shape {kind!r} (expected 'circle' or 'box')")


def _write_png_atomic(mask: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG"))


def prepare_mias(
    root: str | Path,
    out: str | Path,
    mask_dir: str | Path | None = None,
    shape: str = "circle",
    keep_uncoordinated: bool = False,
) -> PrepareReport:
    """Datalist of mini-MIAS benign and malignant findings with one mask per finding.

    Args:
        root: folder holding ``Info.txt`` and ``mdbNNN.png`` (or ``.pgm``).
        out: datalist to write (``.csv`` or ``.json``).
        mask_dir: where masks are written; default ``masks/`` beside ``out``.
        shape: ``circle`` or ``box`` masks.
        keep_uncoordinated: keep findings without coordinates with an empty mask column
            (meaning the whole image) instead of dropping them.

    Returns:
        The report; rows have the extra columns ``site`` (``mias``), ``modality`` (``MG``),
        ``exam`` (the patient: one exam of two films), ``laterality`` (``L``/``R`` by the film
        number), ``abnormality``, ``tissue``, ``x``, ``y``
        (as in Info.txt, counted from the bottom), ``radius``.

    Raises:
        FileNotFoundError: no Info.txt in ``root``.
        MiasParseError: malformed Info.txt.
    """
    t0 = time.perf_counter()
    if shape not in ("circle", "box"):
        raise ValueError(f"unknown mask shape {shape!r} (expected 'circle' or 'box')")
    root, out = Path(root), Path(out)
    info = root / "Info.txt"
    if not info.is_file():
        raise FileNotFoundError(f"{info}: mini-MIAS annotation file not found")
    mask_dir = Path(mask_dir) if mask_dir is not None else out.parent / "masks"
    findings = parse_info(info)
    report = PrepareReport("mias")
    per_film: dict[str, int] = {}
    rows = []
    for f in findings:
        if f.severity not in SEVERITY:
            continue  # normal film
        per_film[f.ref] = per_film.get(f.ref, 0) + 1
        case_id = f"{f.ref}_{per_film[f.ref]}"
        image = next((root / f"{f.ref}{s}" for s in (".png", ".pgm") if (root / f"{f.ref}{s}").is_file()), None)
        if image is None:
            report.dropped.append((case_id, "image file missing"))
            continue
        mask: list[str] = []
        if f.has_coordinates:
            with Image.open(image) as im:
                size = (im.height, im.width)
            mpath = mask_dir / f"{case_id}.png"
            _write_png_atomic(finding_mask(size, f, shape), mpath)
            mask = [str(mpath)]
        elif not keep_uncoordinated:
            report.dropped.append((case_id, "finding without coordinates"))
            continue
        rows.append(
            {
                "case_id": case_id,
                "image": str(image),
                "mask": mask,
                "label": SEVERITY[f.severity],
                "group": f"mias_p{f.patient:03d}",
                "site": "mias",
                "modality": "MG",
                "exam": f"mias_p{f.patient:03d}",
                "laterality": f.laterality,
                "abnormality": f.abnormality,
                "tissue": f.tissue,
                "x": "" if f.x is None else f.x,
                "y": "" if f.y is None else f.y,
                "radius": "" if f.radius is None else f.radius,
            }
        )
    report.write(rows, out, t0, f"{info}: no benign or malignant finding left to write")
    report.count_groups(r["group"] for r in rows)
    report.notes.append(f"masks ({shape}) written to {mask_dir}")
    if keep_uncoordinated:
        n = sum(1 for r in rows if not r["mask"])
        report.notes.append(f"{n} findings without coordinates kept with an empty mask (whole image)")
    return report


register_preparer(
    Preparer(
        name="mias",
        run=prepare_mias,
        help="mini-MIAS mammograms (Info.txt)",
        description="One row per benign or malignant finding of Info.txt, with a circular (or box) "
        "mask written per finding; the left and right films of a patient share a group.",
        root_help="folder holding Info.txt and mdbNNN.png",
        options=(
            Option("mask_dir", "where to write masks (default: masks/ beside --out)", type=Path),
            Option("shape", "mask shape (default circle)", default="circle", choices=("circle", "box")),
            Option(
                "keep_uncoordinated",
                "keep findings without coordinates, with an empty mask (= whole image)",
                switch=True,
            ),
        ),
    )
)
