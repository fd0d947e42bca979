"""BrEaST-Lesions_USG preparation: a synthetic sheet for exact behaviour, the real release for counts."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastai.data.datalist import read_datalist
from breastai.data.prepare import get_preparer, prepare_breast_lesions_usg

DATA = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
BREAST = DATA / "breast-lesions-usg"
needs_breast = pytest.mark.skipif(
    not (BREAST / "clinical.csv").is_file(), reason=f"BrEaST-Lesions_USG not found at {BREAST} (set BREASTAI_DATA)"
)

HEADER = ["CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filename", "Pixel_size", "Age", "BIRADS",
          "Verification", "Diagnosis", "Classification"]
SHEET = [
    ["1", "case001.png", "case001_tumor.png", "", "0.0078125", "57", "2", "confirmed by follow-up care", "", "benign"],
    ["2", "case002.png", "case002_tumor.png", "case002_other1.png", "0.006", "", "5", "confirmed by biopsy", "", "Malignant "],
    ["3", "case003.png", "", "", "0.0078125", "40", "1", "not applicable", "", "normal"],
    ["4", "case004.png", "", "", "0.0078125", "40", "4a", "confirmed by biopsy", "", "benign"],
    ["5", "case005.png", "case005_tumor.png", "", "0.0078125", "40", "3", "confirmed by biopsy", "", ""],
    ["6", "case006.png", "case006_tumor.png", "", "7.8", "40", "4c", "second opinion", "", "benign"],
]


def _synthetic(tmp_path: Path) -> Path:
    root = tmp_path / "breast"
    (root / "images").mkdir(parents=True)
    with open(root / "clinical.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(SHEET)
    for k in range(1, 7):
        Image.fromarray(np.full((16, 20), 10 * k, np.uint8)).save(root / "images" / f"case{k:03d}.png")
    for name in ("case001_tumor", "case002_tumor", "case002_other1", "case005_tumor", "case006_tumor"):
        Image.fromarray(np.full((16, 20), 255, np.uint8)).save(root / "images" / f"{name}.png")
    return root


def test_synthetic_rows(tmp_path):
    root = _synthetic(tmp_path)
    out = tmp_path / "lists" / "breast.csv"
    rep = prepare_breast_lesions_usg(root, out)
    recs = read_datalist(out, classes=["benign", "malignant"])
    assert [r["case_id"] for r in recs] == ["case001", "case002", "case006"]
    assert [r["label"] for r in recs] == ["benign", "malignant", "benign"]  # "Malignant " normalised
    # Only the tumour mask: the other-finding mask of case002 is not the lesion.
    assert [Path(m).name for m in recs[1]["mask"]] == ["case002_tumor.png"]
    assert all(r["group"] == r["case_id"] for r in recs)
    assert {(r["site"], r["modality"]) for r in recs} == {("breast-lesions-usg", "US")}
    assert [r["pixel_size_mm"] for r in recs] == ["0.078125", "0.06", "78"]
    assert [r["birads"] for r in recs] == ["2", "5", "4c"]
    assert [r["verification"] for r in recs] == ["follow-up", "biopsy", "second opinion"]
    assert sorted(rep.dropped) == [
        ("case003", "normal (use --include-normal)"),
        ("case004", "benign/malignant without a tumour mask"),
        ("case005", "Classification '' is not benign/malignant/normal"),
    ]
    text = rep.summary()
    assert "benign 2, malignant 1" in text and "case006" in text  # implausible spacing noted
    assert "second opinion" in text


def test_synthetic_include_normal(tmp_path):
    root = _synthetic(tmp_path)
    rep = prepare_breast_lesions_usg(root, tmp_path / "b.json", include_normal=True)
    recs = {r["case_id"]: r for r in read_datalist(tmp_path / "b.json")}
    assert recs["case003"]["label"] == "normal" and recs["case003"]["mask"] == []
    assert rep.counts == {"benign": 2, "malignant": 1, "normal": 1}


def test_registered_and_errors(tmp_path):
    assert get_preparer("breast-lesions-usg").run is prepare_breast_lesions_usg
    with pytest.raises(FileNotFoundError, match="clinical.csv"):
        prepare_breast_lesions_usg(tmp_path, tmp_path / "x.csv")
    (tmp_path / "clinical.csv").write_text("CaseID,Image_filename\n1,case001.png\n")
    with pytest.raises(ValueError, match="missing column"):
        prepare_breast_lesions_usg(tmp_path, tmp_path / "x.csv")


@needs_breast
def test_real_release(tmp_path):
    out = tmp_path / "breast.csv"
    rep = prepare_breast_lesions_usg(BREAST, out)
    assert rep.counts == {"benign": 154, "malignant": 98}
    assert sorted(c for c, _ in rep.dropped) == ["case045", "case061", "case209", "case213"]
    recs = read_datalist(out, classes=["benign", "malignant"])
    assert len(recs) == 252 and len({r["group"] for r in recs}) == 252
    assert all(len(r["mask"]) == 1 and r["mask"][0].endswith("_tumor.png") for r in recs)
    assert {(r["site"], r["modality"]) for r in recs} == {("breast-lesions-usg", "US")}
    spacing = [float(r["pixel_size_mm"]) for r in recs]
    assert 0.04 < min(spacing) and max(spacing) < 0.15  # mm per pixel, 0.043-0.139 in the release
    # Field of view: width x spacing is a few cm, the footprint of a linear breast probe.
    widths = sorted(Image.open(r["image"]).size[0] * float(r["pixel_size_mm"]) for r in recs)
    assert 30 < widths[len(widths) // 2] < 60
    assert {r["verification"] for r in recs} == {"biopsy", "follow-up"}
    assert {r["birads"] for r in recs} <= {"2", "3", "4a", "4b", "4c", "5"}
    assert "note" in rep.summary() and not any("outside" in n for n in rep.notes)
