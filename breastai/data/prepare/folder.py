"""Generic class folders: ``ROOT/<class>/**/<image>`` with optional ``<image>_mask[_N].<ext>``."""

from __future__ import annotations

import re
import time
from pathlib import Path

from breastai.core.files import visible_files
from breastai.data.prepare.registry import Option, Preparer, register_preparer
from breastai.data.prepare.report import PrepareReport
from breastai.data.readers.registry import IMAGE_SUFFIXES, image_stem, image_suffix

__all__ = ["scan_class_folder", "prepare_folder"]


def _is_image(path: Path) -> bool:
    return image_suffix(path) in IMAGE_SUFFIXES  # visible_files already left hidden ones out


def scan_class_folder(folder: Path, mask_suffix: str = "_mask") -> list[tuple[Path, list[Path]]]:
    """Images found recursively in ``folder`` with their mask files, sorted by path.

    A file ``<stem><mask_suffix>.<ext>`` or ``<stem><mask_suffix>_<N>.<ext>`` in the same folder
    as ``<stem>.<ext2>`` is a mask of that image; several masks mean their union.
    """
    mask_re = re.compile(re.escape(mask_suffix) + r"(_\d+)?$") if mask_suffix else None
    images: dict[tuple[Path, str], Path] = {}
    masks: dict[tuple[Path, str], list[Path]] = {}
    for p in visible_files(folder):
        if not _is_image(p):
            continue
        stem = image_stem(p)
        m = mask_re.search(stem) if mask_re else None
        if m:
            masks.setdefault((p.parent, stem[: m.start()]), []).append(p)
        elif (p.parent, stem) in images:
            raise ValueError(f"{images[(p.parent, stem)]} and {p.name}: two images with one name in one folder; "
                             "their masks and case_id would be shared, so rename or remove one")
        else:
            images[(p.parent, stem)] = p
    orphans = [m for key, ms in masks.items() if key not in images for m in ms]
    if orphans:
        raise ValueError(f"{orphans[0]}: mask file without a matching image in {orphans[0].parent}")

    def mask_order(p: Path) -> tuple[int, str]:
        n = re.search(r"_(\d+)$", image_stem(p))
        return (int(n.group(1)) + 1 if n else 0, p.name)

    return [(img, sorted(masks.get(key, []), key=mask_order)) for key, img in sorted(images.items(), key=lambda kv: str(kv[1]))]


def _case_id(label: str, rel: Path) -> str:
    stem = image_stem(rel)
    parts = [*rel.parent.parts, stem] if rel.parent != Path(".") else [stem]
    return label + "_" + "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", p).strip("-") for p in parts)


def prepare_folder(
    root: str | Path,
    out: str | Path,
    mask_suffix: str = "_mask",
    site: str | None = None,
    modality: str = "",
) -> PrepareReport:
    """Datalist of ``ROOT/<class>/...`` images, one row per image, label = class folder.

    Args:
        root: folder with one sub-folder per class (hidden folders are ignored).
        out: datalist to write (``.csv`` or ``.json``).
        mask_suffix: file-name suffix that marks mask files (empty string: no masks).
        site: the ``site`` column of every row; default the name of ``root`` (a plain folder
            names no dataset, and its own name is the best guess that stays stable).
        modality: the ``modality`` column (``US``, ``MG``); empty when not given, since a folder
            of images does not say.

    Returns:
        The report. ``case_id`` is ``<class>_<relative path>``; ``group`` is the case_id, since
        a plain folder says nothing about patients. Rows carry ``site`` and ``modality``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folder with images, a mask without its image, or two files that
            map to one case_id.
    """
    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    site = site or root.resolve().name
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    rows = []
    seen: dict[str, Path] = {}
    report = PrepareReport("folder")
    for cdir in classes:
        found = scan_class_folder(cdir, mask_suffix)
        if not found:
            report.notes.append(f"class folder {cdir.name}/ has no images")
        for image, masks in found:
            case_id = _case_id(cdir.name, image.relative_to(cdir))
            if case_id in seen:
                raise ValueError(f"{image}: same case_id {case_id!r} as {seen[case_id]}; rename one of them")
            seen[case_id] = image
            rows.append(
                {"case_id": case_id, "image": str(image), "mask": [str(m) for m in masks], "label": cdir.name, "group": case_id,
                 "site": site, "modality": modality}
            )
    return report.write(rows, out, t0, f"{root}: no images found in class sub-folders")


register_preparer(
    Preparer(
        name="folder",
        run=prepare_folder,
        help="generic ROOT/<class>/... image folders",
        description="One row per image found recursively under ROOT/<class>/; label = class folder; "
        "files named <image><mask-suffix>[_N].<ext> are that image's masks.",
        root_help="folder with one sub-folder per class",
        options=(
            Option("mask_suffix", "mask file name suffix (default _mask)", default="_mask"),
            Option("site", "the 'site' column (default: the name of ROOT)"),
            Option("modality", "the 'modality' column, e.g. US or MG (default: empty)", default=""),
        ),
    )
)
